"""The driver's drawing of the progress bars of ``tqdm_ray``: every bar of every task, in one place.

A bar's state comes as a dict (from this process) or as a line of worker output holding
``RAY_TQDM_MAGIC`` and the state as JSON, marked ``(task pid=N, ip=HOST) `` as the worker's lines are: that
mark starts the bar's line. Output handlers of the driver pass what workers print through ``write_output``,
which draws the bars of the magic lines and prints the other lines above the bars.

On a terminal the open bars are the last lines on it, redrawn in place; a closed bar's last state stays as a
line above them. Elsewhere (a pipe, a file, a CI log) nothing is redrawn: a bar prints a line when it opens,
at most once per ``ANYRAY_TQDM_LINE_INTERVAL_S`` seconds (5 by default) while it moves, and once when it
closes, so a log holds whole lines only.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import sys
import threading
import time

RAY_TQDM_MAGIC = "__ray_tqdm_magic_token__"
_MAGIC_START = '{"__magic_token__": "' + RAY_TQDM_MAGIC

_print = builtins.print
_manager: BarManager | None = None
_manager_lock = threading.Lock()


def _line_interval() -> float:
    try:
        return max(0.0, float(os.environ.get("ANYRAY_TQDM_LINE_INTERVAL_S", "5")))
    except ValueError:
        return 5.0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:02d}:{rest % 60:02d}"


def _count(value) -> str:
    return str(value) if isinstance(value, int) or value != int(value) else str(int(value))


def _check(state) -> dict:
    """``state`` if it is a bar's state as ``tqdm_ray.tqdm`` sends it, else ``ValueError``."""
    number = (int, float)
    if not (isinstance(state, dict) and isinstance(state.get("x", 0), number)
            and isinstance(state.get("total"), (*number, type(None))) and isinstance(state.get("desc", ""), str)
            and isinstance(state.get("unit", ""), str) and isinstance(state.get("pos", 0), int)):
        raise ValueError(f"not a progress bar's state: {state!r:.200}")
    return state


class _Bar:
    """One bar: the last state of a ``tqdm_ray.tqdm``, what marks it, and when it was last printed."""

    __slots__ = ("state", "label", "order", "opened", "printed_at", "printed")

    def __init__(self, state: dict, label: str, order: int):
        self.state, self.label, self.order = state, label, order
        self.opened = time.monotonic()
        self.printed_at = 0.0
        self.printed = ""

    def line(self, width: int, fill: str) -> str:
        """The bar as tqdm draws it: ``desc: 40%|####      | 40/100 [00:02<00:03, 19.5it/s]``."""
        s = self.state
        x, total, unit = s.get("x") or 0, s.get("total"), s.get("unit") or "it"
        elapsed = time.monotonic() - self.opened
        rate = x / elapsed if elapsed >= 0.5 else 0.0  # none yet in the first half second: its first state came
        speed = f"{rate:.2f}{unit}/s" if rate > 0 else f"?{unit}/s"
        head = self.label + (f"{s['desc']}: " if s.get("desc") else "")
        if not total:
            return f"{head}{_count(x)}{unit} [{_duration(elapsed)}, {speed}]"[:width]
        left = _duration((total - x) / rate) if rate > 0 and x <= total else "?"
        tail = f"| {_count(x)}/{_count(total)} [{_duration(elapsed)}<{left}, {speed}]"
        room = max(10, min(40, width - len(head) - len(tail) - 5))
        done = max(0, min(room, int(room * x / total)))
        return f"{head}{100 * x / total:3.0f}%|{fill * done}{' ' * (room - done)}{tail}"[:width]


class BarManager:
    """Every bar the driver draws, keyed by each ``tqdm``'s uuid, on ``sys.stdout`` as it is at each draw."""

    def __init__(self):
        self.lock = threading.RLock()
        self.bars: dict[str, _Bar] = {}
        self._groups: dict[str, int] = {}  # the order in which each worker's first bar came
        self._drawn = 0  # lines of bars on the terminal now, above the cursor
        self._hidden = False
        self._seen = 0
        self._partial: dict = {}  # stream -> the start of a line a worker wrote, waiting for its end

    # -- what comes in -------------------------------------------------------------------------------------
    def process_state_update(self, state: dict, label: str = "") -> None:
        """Draw the state of a bar: a new bar, a change, or its close. A state that is not one (a line a task
        made up) raises ``ValueError``."""
        _check(state)
        with self.lock:
            key = str(state.get("uuid"))
            bar = self.bars.get(key)
            if bar is None:
                group = self._groups.setdefault(label, len(self._groups))
                self._seen += 1
                bar = self.bars[key] = _Bar(state, label, (group, int(state.get("pos") or 0), self._seen))
            bar.state = state
            if state.get("closed"):
                del self.bars[key]
            self._show(bar, opened=bar.printed_at == 0.0, closed=bool(state.get("closed")))

    def write_output(self, stream, text: str) -> None:
        """Print ``text`` that workers wrote, with the bar lines in it drawn as bars instead. While bars are
        open, the start of a line waits for its end, so that no bar is drawn in the middle of it."""
        with self.lock:
            plain = []
            lines = (self._partial.pop(stream, "") + text).splitlines(keepends=True)
            if lines and not lines[-1].endswith(("\n", "\r")) and self.bars:
                self._partial[stream] = lines.pop()
            for line in lines:
                start = line.find(_MAGIC_START)
                if start < 0:
                    plain.append(line)
                    continue
                try:
                    state = _check(json.loads(line[start:]))
                except ValueError:  # not a whole state: print it as it is
                    plain.append(line)
                    continue
                self._print_plain(stream, plain)
                self.process_state_update(state, line[:start])
            self._print_plain(stream, plain)
            if not self.bars:  # the starts of lines that waited for the bars to close
                for out in list(self._partial):
                    self._print_plain(out, [self._partial.pop(out)])

    def _print_plain(self, stream, plain: list) -> None:
        if plain:
            self.hide_bars()
            try:
                stream.write("".join(plain))
                stream.flush()
            finally:
                self.unhide_bars()
            plain.clear()

    # -- drawing -------------------------------------------------------------------------------------------
    def hide_bars(self) -> None:
        """Take the bars off the terminal (before printing something else)."""
        with self.lock:
            if not self._hidden:
                self._hidden = True
                self._erase()

    def unhide_bars(self) -> None:
        """Draw the bars again, below what was printed since ``hide_bars``."""
        with self.lock:
            if self._hidden:
                self._hidden = False
                self._draw()

    def _show(self, bar: _Bar, opened: bool, closed: bool) -> None:
        out = sys.stdout
        width, fill = self._geometry(out)
        if self._tty(out):
            self._erase()
            if closed:
                out.write(bar.line(width, fill) + "\n")
            self._draw()
            return
        now = time.monotonic()
        if not (opened or closed or now - bar.printed_at >= _line_interval()):
            return
        line = bar.line(width, fill)
        if closed and line == bar.printed:  # its last state is printed already
            return
        bar.printed_at, bar.printed = now, line
        out.write(line + "\n")
        out.flush()

    def _erase(self) -> None:
        if self._drawn:
            out = sys.stdout
            out.write(f"\r\x1b[{self._drawn}A\x1b[J")  # up to the first bar's line, then clear to the end
            out.flush()
            self._drawn = 0

    def _draw(self) -> None:
        out = sys.stdout
        if self._hidden or not self.bars or not self._tty(out):
            return
        width, fill = self._geometry(out)
        bars = sorted(self.bars.values(), key=lambda b: b.order)
        room = max(2, shutil.get_terminal_size((100, 24)).lines - 2)  # what does not fit could not be erased
        lines = [bar.line(width - 1, fill) for bar in bars[:room if len(bars) <= room else room - 1]]
        if len(bars) > room:
            lines.append(f"... and {len(bars) - room + 1} more bars")
        out.write("".join(line + "\n" for line in lines))
        out.flush()
        self._drawn = len(lines)

    @staticmethod
    def _tty(out) -> bool:
        try:
            return out.isatty()
        except (AttributeError, ValueError):
            return False

    @staticmethod
    def _geometry(out) -> tuple[int, str]:
        width = shutil.get_terminal_size((100, 24)).columns
        encoding = (getattr(out, "encoding", None) or "").lower().replace("-", "")
        return max(20, width), ("\u2588" if encoding == "utf8" else "#")


def safe_print(*args, **kwargs) -> None:
    """``print`` that does not break the progress bars the driver draws: they are taken off the terminal, the
    text is printed, and they are drawn again below it. Printing to another file is plain ``print``."""
    if kwargs.get("file") not in (sys.stdout, sys.stderr, None):
        _print(*args, **kwargs)
        return
    manager = instance()
    with manager.lock:  # no bar drawn by another thread in the middle
        manager.hide_bars()
        try:
            _print(*args, **kwargs)
        finally:
            manager.unhide_bars()


def patch_print() -> None:
    """Make ``print`` ``safe_print``, as Ray does once its driver draws bars (``RAY_TQDM_PATCH_PRINT=0`` keeps
    the builtin)."""
    if os.environ.get("RAY_TQDM_PATCH_PRINT", "1").lower() not in ("0", "false", "no"):
        builtins.print = safe_print


def instance() -> BarManager:
    """This process's bar manager, made on first use; then ``print`` is ``safe_print`` too."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = BarManager()
            patch_print()
        return _manager


def write_output(stream, text: str) -> None:
    """How the driver prints what its workers wrote: plain, unless there are bars to draw or to keep whole."""
    if _manager is None and RAY_TQDM_MAGIC not in text:
        stream.write(text)
        return
    instance().write_output(stream, text)


__all__ = ["RAY_TQDM_MAGIC", "BarManager", "instance", "patch_print", "safe_print", "write_output"]

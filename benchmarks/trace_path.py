"""Which of anyray's source files one task passes through, from ``f.remote()`` to ``get``, in every process.

    python benchmarks/trace_path.py [--backend multiprocess|cluster] [--actor] [--show-calls]

The program runs again in a child interpreter whose ``sitecustomize`` puts a profile hook on every
thread of every process it starts (the driver, the fork server and the workers forked from it). Each
hook appends the calls into anyray's files, with the system-wide monotonic clock, to a file per
process. After warming up (one task, so a worker exists and the function is known), the driver
notes the time around one ``get(f.remote(1))``; only the calls inside that window count.

It prints, per process, the files in the order first entered, then:

- the distinct files of the path, less the value types (``ids``, ``object_ref``, ``specs``,
  ``context``, ``events``, ``exceptions``, ``messages``: data the path carries, not steps of it;
  reading a value's property, such as a serialized object's size, is using data too);
  among them, those the path passes through (code in them calls on into another of those files) and
  those it only calls, which return without calling further (helpers: a lease, a frame header, a
  record);
- up-calls: a call into a file that is already on the calling thread's stack below another file
  (code that calls down and back up, as a subclass and its base do).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import subprocess
import sys
import tempfile
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIXES = (os.path.join(ROOT, "core") + os.sep, os.path.join(ROOT, "adapters") + os.sep)
VALUE_TYPES = {"core/ids.py", "core/object_ref.py", "core/specs.py", "core/context.py", "core/events.py",
               "core/exceptions.py", "adapters/node/messages.py"}
VALUE_READS = {("core/serialization.py", "nbytes")}  # a value's property (a SerializedObject's size)

SITECUSTOMIZE = textwrap.dedent('''
    import os, sys, threading, time
    _out = os.environ["ANYRAY_TRACE_PATH"]
    _prefixes = tuple(os.environ["ANYRAY_TRACE_PREFIXES"].split(os.pathsep))
    _files = {}

    def _hook(frame, event, arg):
        if event != "call" and event != "return":
            return
        name = frame.f_code.co_filename
        if not name.startswith(_prefixes):
            return
        pid = os.getpid()
        f = _files.get(pid)
        if f is None:
            f = _files[pid] = open(f"{_out}.{pid}", "a", buffering=1)
        f.write(f"{time.monotonic():.9f} {threading.get_ident()} {event} {name} {frame.f_code.co_name}\\n")

    sys.setprofile(_hook)
    threading.setprofile(_hook)
''')

PROGRAM = textwrap.dedent('''
    import sys, time
    import anyray
    anyray.init(backend=sys.argv[1], num_cpus=1)

    @anyray.remote
    def f(x):
        return x + 1

    @anyray.remote
    class A:
        def f(self, x):
            return x + 1

    if sys.argv[2] == "actor":
        f = A.remote().f  # a call to an actor instead (on a cluster: straight to its process once it is up)
    for _ in range(20):             # warm: a worker exists and knows f (an actor's calls found their way)
        anyray.get(f.remote(0))
        time.sleep(0.02)
    time.sleep(0.5)
    start = time.monotonic()
    assert anyray.get(f.remote(1)) == 2
    end = time.monotonic()
    time.sleep(0.2)
    print(f"WINDOW {start:.9f} {end:.9f}")
    anyray.shutdown()
''')


def run(backend: str, what: str = "task") -> tuple[float, float, dict[int, list[tuple[float, int, str, str, str]]]]:
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "sitecustomize.py"), "w") as f:
            f.write(SITECUSTOMIZE)
        env = dict(os.environ, ANYRAY_TRACE_PATH=os.path.join(tmp, "trace"),
                   ANYRAY_TRACE_PREFIXES=os.pathsep.join(PREFIXES),
                   PYTHONPATH=os.pathsep.join([tmp, *filter(None, [os.environ.get("PYTHONPATH")])]))
        out = subprocess.run([sys.executable, "-c", PROGRAM, backend, what], env=env, capture_output=True, text=True,
                             timeout=600)
        if out.returncode:
            sys.exit(f"the traced program failed:\n{out.stdout}\n{out.stderr}")
        start, end = (float(x) for x in next(line for line in out.stdout.splitlines()
                                             if line.startswith("WINDOW")).split()[1:])
        events = {}
        for path in glob.glob(os.path.join(tmp, "trace.*")):
            rows = []
            with open(path) as f:
                for line in f:
                    t, tid, event, name, code = line.split(" ", 4)
                    rows.append((float(t), int(tid), event, os.path.relpath(name, ROOT), code.strip()))
            events[int(path.rsplit(".", 1)[1])] = rows
    return start, end, events


def analyse(start: float, end: float, events: dict, show_calls: bool = False) -> dict:
    """Print the path and return it: ``steps`` (files, less value types), ``through`` (those passing the
    task on) and ``up_calls`` ({(caller, callee): count})."""
    path_files: list[str] = []
    up_calls = collections.Counter()
    passes_on: set[str] = set()  # files from which the path goes on into another file
    for pid, rows in sorted(events.items()):
        stacks: dict[int, list[str]] = collections.defaultdict(list)
        order: list[str] = []
        for t, tid, event, name, code in rows:
            stack = stacks[tid]
            if event == "return":
                if stack:
                    stack.pop()
                continue
            inside = start <= t <= end
            if inside:
                if name not in order:
                    order.append(name)
                caller = stack[-1] if stack else None
                if caller is not None and caller != name:
                    if name not in VALUE_TYPES and (name, code) not in VALUE_READS:  # using data passes nothing on
                        passes_on.add(caller)
                    if name in stack:
                        up_calls[(caller, name)] += 1
                if show_calls:
                    print(f"  {pid} {tid} {'  ' * min(len(stack), 20)}{name}:{code}")
            stack.append(name)
        if order:
            print(f"process {pid}: " + " -> ".join(order))
            path_files += [n for n in order if n not in path_files]
    steps = [n for n in path_files if n not in VALUE_TYPES]
    through = [n for n in steps if n in passes_on]
    print(f"\n{len(steps)} files on the path (less {len(path_files) - len(steps)} value types), "
          f"{len(through)} of them passing the task on to another file (the others are only called and return):")
    for name in steps:
        print(f"  {name}{'' if name in passes_on else '   (called, returns)'}")
    print(f"\nup-calls (a call back into a file already on the stack): {sum(up_calls.values())}")
    for (caller, callee), n in up_calls.most_common():
        print(f"  {caller} -> {callee}: {n}")
    return {"steps": steps, "through": through, "up_calls": dict(up_calls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="multiprocess")
    parser.add_argument("--show-calls", action="store_true", help="print every call inside the window")
    parser.add_argument("--actor", action="store_true", help="trace one actor call instead of one task")
    args = parser.parse_args()
    start, end, events = run(args.backend, "actor" if args.actor else "task")
    analyse(start, end, events, show_calls=args.show_calls)
    print(f"\nthe window: {(end - start) * 1e6:.0f} us (with the profile hooks on)")


if __name__ == "__main__":
    main()

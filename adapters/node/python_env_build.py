"""Building one Python environment for ``python_envs``: the virtual environment, the ``.pth`` that layers it on
the node's packages, and the installer's runs, each bounded by the setup deadline and logged to the
environment's ``install.log`` (an error carries the failing command's output, with URL credentials masked)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import time

from anyray.exceptions import RuntimeEnvSetupError

OUTPUT_LIMIT = 8000  # the last characters of a failing installer's output that go into the error
PTH_NAME = "_anyray_node_packages.pth"
_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_INDEX_OPTIONS = ("--index-url", "-i", "--extra-index-url", "--find-links", "-f")  # may hold credentials
_PIP_DEFAULT_OPTIONS = ["--disable-pip-version-check", "--no-cache-dir"]  # Ray's
_UV_DEFAULT_OPTIONS = ["--no-cache"]  # Ray's
_UV_GUIDE = ("uv is not installed on this node (neither the `uv` Python package nor `uv` on PATH), and "
             "installing it into the environment failed. Install it where the node runs (`pip install uv`), "
             "or use runtime_env['pip'].")


def redact(text: str) -> str:
    """``text`` with the user:password part of every URL in it masked."""
    return _CREDENTIALS.sub(r"\1****@", text)


def build_env(tool: str, spec: dict, target: str, site_dirs: list[str], deadline: float | None, timeout) -> None:
    """Build the environment of the normalised ``spec`` in the new directory ``target``; raises
    RuntimeEnvSetupError when an install fails or the deadline passes (the caller removes ``target``)."""
    os.mkdir(target, 0o700)
    import venv  # here: a node loads this module, few build environments

    venv.EnvBuilder(symlinks=True, with_pip=False).create(target)
    python = os.path.join(target, "bin", "python")
    with open(os.path.join(_site_packages(target), PTH_NAME), "w") as pth:  # the node's packages, after its own
        pth.write("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in site_dirs) + "\n")
    run = _Runner(target, deadline, timeout, spec["packages"])
    requirements, options = _split_options(spec, tool)
    requirements_file = os.path.join(target, "requirements.txt")
    with open(os.open(requirements_file, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "w") as out:
        out.write("\n".join(requirements) + "\n")
    if importlib.util.find_spec("pip") is None:  # the node has no pip to lend: the environment gets its own
        run([python, "-m", "ensurepip", "--default-pip"], "python -m ensurepip")
    if tool == "pip":
        if spec.get("pip_version"):
            run([python, "-m", "pip", "install", *_PIP_DEFAULT_OPTIONS, f"pip{spec['pip_version']}"],
                "pip install pip" + spec["pip_version"])
        run([python, "-m", "pip", "install", "-r", requirements_file, *options], "pip install")
        if spec.get("pip_check"):
            run([python, "-m", "pip", "check"], "pip check")
    else:
        uv = _find_uv(spec, python, run)
        run([uv, "pip", "install", "--python", python, "-r", requirements_file, *options], "uv pip install")
        if spec.get("uv_check"):
            run([uv, "pip", "check", "--python", python], "uv pip check")
    os.unlink(requirements_file)  # it may name an index with credentials: none stay at rest
    run.redact_log()


def _site_packages(target: str) -> str:
    import sysconfig

    scheme = "venv" if "venv" in sysconfig.get_scheme_names() else "posix_prefix"
    return sysconfig.get_path("purelib", scheme=scheme, vars={"base": target, "platbase": target})


def install_options(tool: str, spec: dict) -> list[str]:
    """The options the install runs with: the spec's, else Ray's defaults for the tool."""
    if tool == "pip":
        given = spec.get("pip_install_options")
        return list(_PIP_DEFAULT_OPTIONS if given is None else given)
    given = spec.get("uv_pip_install_options")
    return list(_UV_DEFAULT_OPTIONS if given is None else given)


def _split_options(spec: dict, tool: str) -> tuple[list[str], list[str]]:
    """The requirements file's lines (index options first: they may carry credentials, which must not go on
    a command line) and the options left for the command line."""
    options = install_options(tool, spec)
    index_lines, rest = [], []
    i = 0
    while i < len(options):
        option = options[i]
        name = option.split("=", 1)[0]
        if name in _INDEX_OPTIONS:
            if "=" in option:
                index_lines.append(option.replace("=", " ", 1))
            elif i + 1 < len(options):
                index_lines.append(f"{option} {options[i + 1]}")
                i += 1
            else:
                rest.append(option)  # the installer reports the missing value
        else:
            rest.append(option)
        i += 1
    packages = [p.strip() for p in spec["packages"]]
    return index_lines + [p for p in packages if p and not p.startswith("#")], rest


def _find_uv(spec: dict, python: str, run) -> str:
    """The uv to install with: the node's (its ``uv`` package, else PATH), or, as Ray does, the ``uv`` package
    installed into the environment (always when ``uv_version`` names one)."""
    version = spec.get("uv_version")
    if not version:
        if importlib.util.find_spec("uv") is not None:
            try:
                from uv import find_uv_bin

                return find_uv_bin()
            except (ImportError, FileNotFoundError):
                pass
        found = shutil.which("uv")
        if found:
            return found
    try:
        run([python, "-m", "pip", "install", *_PIP_DEFAULT_OPTIONS, f"uv{version or ''}"], "pip install uv")
    except RuntimeEnvSetupError as exc:
        if version:
            raise
        raise RuntimeEnvSetupError(f"{_UV_GUIDE}\n{exc.error_message}") from None
    return os.path.join(os.path.dirname(python), "uv")


class _Runner:
    """Runs the installer's commands in the environment, one at a time, within the deadline."""

    def __init__(self, target: str, deadline: float | None, timeout, packages: list[str]):
        self._target = target
        self._cwd = os.path.join(target, "build")  # empty: nothing there shadows what is installed
        os.mkdir(self._cwd, 0o700)
        self._deadline = deadline
        self._timeout = timeout
        what = ", ".join(redact(p.strip()) for p in packages if p.strip() and not p.strip().startswith("#"))
        self._what = what if len(what) <= 500 else what[:500] + " ..."
        self._env = dict(os.environ, PIP_NO_INPUT="1", PIP_USER="0", VIRTUAL_ENV=target)
        for redirect in ("PYTHONHOME", "PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "UV_SYSTEM_PYTHON"):
            self._env.pop(redirect, None)  # the install goes into the environment, nowhere else
        self._log = os.path.join(target, "install.log")

    def __call__(self, cmd: list[str], what: str) -> None:
        remaining = None if self._deadline is None else max(self._deadline - time.monotonic(), 0.001)
        with open(self._log, "ab") as out:
            out.write(f"$ {redact(' '.join(cmd))}\n".encode())
            out.flush()
            start = out.tell()
            proc = subprocess.Popen(cmd, cwd=self._cwd, env=self._env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                returncode = proc.wait(remaining)
            except subprocess.TimeoutExpired:
                _kill(proc)
                raise RuntimeEnvSetupError(
                    f"Installing [{self._what}] did not finish within {self._timeout} s (runtime_env config "
                    f"setup_timeout_seconds); `{what}` was stopped.") from None
            except BaseException:
                _kill(proc)
                raise
        if returncode != 0:
            raise RuntimeEnvSetupError(f"`{what}` failed ({_exit(returncode)}) installing [{self._what}]:\n"
                                       f"{self._output(start)}")

    def redact_log(self) -> None:
        """Mask URL credentials in what the installers wrote, which stays in the environment."""
        with open(self._log, "rb") as source:
            text = source.read().decode(errors="replace")
        with open(self._log, "w") as out:
            out.write(redact(text))

    def _output(self, start: int) -> str:
        with open(self._log, "rb") as source:
            source.seek(start)
            text = source.read().decode(errors="replace").strip()
        if len(text) > OUTPUT_LIMIT:
            text = "..." + text[-OUTPUT_LIMIT:]
        return redact(text)


def _exit(returncode: int) -> str:
    return f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the installer and whatever it started (a build backend)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()

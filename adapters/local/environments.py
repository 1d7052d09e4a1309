"""A task's or actor's own runtime_env on the local backend, where all work runs on threads of one process.

Threads share ``os.environ``, the working directory and ``sys.path``, so at any moment the process is in one
environment: the job's (``init(runtime_env=...)``, applied at ``init``, or none), or one of a task's or actor's
own. ``Environments`` is a lock over that choice, held by every running task and actor call:

- Work of one environment runs at once, as many as hold it; work of another waits until they are all done,
  then its environment is applied (env_vars set, py_modules and the working_dir on ``sys.path``, the cwd
  changed) and put back once its last holder is done, so the job's work (and the driver) sees the job's
  environment whenever no own-environment work runs. Waiters enter in arrival order, a batch of the same
  environment together, so none starves.
- A call that blocks in ``get``/``wait`` lets go (its environment put back) and takes it again, its
  environment applied again, when it resumes: a task with one environment waiting for a child with another
  cannot deadlock. A caller that runs the child inline (``run_here``) lets go of its own the same way.
- An async actor's calls, and ``async def`` tasks, hold it one step at a time (from one await to the next), so
  awaiting lets others run. Waiting any other way (a ``threading.Event``, a generator's backpressure) keeps it.
- ``worker_process_setup_hook`` runs once per environment, the first time it is applied (Ray runs it once in
  every worker, and a worker serves one environment); the environment variables it sets are recorded and
  set again, and put back, with the rest of that environment.

- Modules imported from an environment's own folders (working_dir, py_modules) leave ``sys.modules`` when
  its turn ends and come back with its next one, and modules of the same name imported from elsewhere are
  hidden meanwhile: two environments with different versions of one module each import their own.

What stays shared: other modules once imported, and whatever a setup hook changes other than environment
variables. The driver's own thread is never held back: it sees an own environment while such work runs.
"""

from __future__ import annotations

import collections
import functools
import inspect
import os
import sys
import threading

from anyray import runtime_env_setup
from anyray.backend_kit.actor_host import ActorHost
from anyray.exceptions import RuntimeEnvSetupError
from anyray.executor import serialize_failure
from anyray.object_ref import ObjectRef
from anyray.runtime_env_setup import KEY, running_env
from anyray.specs import RemoteFailure

_POLL = 0.05  # seconds a thread waiting for its environment's turn sleeps between checks for a cancel
_NOT_HELD = object()  # a thread's hold when it holds none (None is the job's environment)
_CO_COROUTINE = inspect.CO_COROUTINE


class _Ticket:
    """A thread waiting for ``key``'s turn (compared by identity: two waiters of one key are two tickets)."""

    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key


# One call running in a thread, a list (cheaper than an object on every task's path):
# [its environment's key, the environment, whether it is blocked in get/wait, the running_env token or None]
_KEY, _ENV, _BLOCKED, _TOKEN = range(4)


class Environments:
    """The process's environment as a lock: shared by the work of one environment, switched between them."""

    def __init__(self, fetch):
        self._fetch = fetch  # fetch(refs) -> values: the packages the driver put in the store
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._current = None        # the environment key applied now (None: the job's)
        self._holders = 0
        self._switching = False     # an environment is being applied or put back, outside the lock
        self._waiting: collections.deque = collections.deque()  # _Tickets, in arrival order
        self._steps: list = []      # what undoes the applied environment
        self._hook_changes: dict = {}  # key -> {name: value or None}: what its setup hook did to os.environ
        self._modules: dict = {}    # key -> {name: module}: imported from its own folders, out of its turn
        self._threads = threading.local()

    # -- what the scheduler calls ----------------------------------------------------
    def wrap(self, call, env: dict | None):
        """``call`` (an executor ``Call``) run holding ``env``'s turn."""
        return _EnvCall(self, call, env)

    def blocked(self) -> None:
        """The calling thread's call waits in get/wait: let go of its environment meanwhile."""
        frames = getattr(self._threads, "frames", None)
        if frames and not frames[-1][_BLOCKED]:
            frames[-1][_BLOCKED] = True
            self._sync()

    def unblocked(self) -> None:
        frames = getattr(self._threads, "frames", None)
        if frames and frames[-1][_BLOCKED]:
            frames[-1][_BLOCKED] = False
            self._sync()

    def close(self) -> None:
        """The backend shuts down: put the job's environment back now, even while abandoned work of another
        holds its turn (that work lets go of nothing more when it ends)."""
        with self._lock:
            if self._current is None or self._switching:
                return
            key, steps, self._steps = self._current, self._steps, []
            self._current = None
        self._undo(key, steps)

    def hold_job(self, call) -> bool:
        """Take the job environment's turn for ``call`` (not ``async def``) at once where nothing is in the way
        (this thread holds nothing, nobody waits, no other environment is applied): ``enter(None)`` for the
        common case, in one step. False, holding nothing, where ``wrap(call, None)`` must run it instead;
        else the caller runs ``call`` and then calls ``let_go_job``."""
        local = self._threads
        frames = getattr(local, "frames", None)
        code = getattr(call.target, "__code__", None)
        if frames or code is None or code.co_flags & _CO_COROUTINE:
            return False
        with self._lock:
            if self._waiting or self._switching or (self._holders and self._current is not None):
                return False
            self._holders += 1
        if frames is None:
            frames = local.frames = []
        frames.append([None, None, False, None])
        local.held = None
        return True

    def let_go_job(self) -> None:
        """End a turn ``hold_job`` took (``leave``, for its frame)."""
        local = self._threads
        frames = local.frames
        frames.pop()
        if not frames and local.held is not _NOT_HELD:
            local.held = _NOT_HELD
            self._release()
        else:
            self._sync()

    # -- a call's turn -------------------------------------------------------------------
    def enter(self, env: dict | None) -> None:
        """The calling thread runs a call in ``env`` from now: wait for its turn (applying it). Raises
        ``RuntimeEnvSetupError`` when the environment cannot be set up (nothing held then)."""
        local = self._threads
        try:
            frames = local.frames
        except AttributeError:
            frames = local.frames = []
            local.held = _NOT_HELD
        key = self._key(env) if env else None
        frame = [key, env, False, None]
        frames.append(frame)
        try:
            if len(frames) == 1:  # the common case: the thread holds nothing yet
                self._acquire(key, env)
                local.held = key
            else:
                self._sync()
        except BaseException:
            frames.pop()
            self._sync()
            raise
        if key is not None or len(frames) > 1:  # a thread's first call in the job's: running_env stays None,
            # and the caller's environment is the job's (runtime_env_setup.env_of_caller)
            frame[_TOKEN] = running_env.set(env)

    def leave(self) -> None:
        local = self._threads
        frames = local.frames
        token = frames.pop()[_TOKEN]
        if token is not None:
            running_env.reset(token)
        if not frames and local.held is not _NOT_HELD:
            local.held = _NOT_HELD
            self._release()
        else:
            self._sync()

    def _key(self, env: dict):
        key = env.get(KEY)
        job = runtime_env_setup.process_env()
        return None if job is not None and job.get(KEY) == key else key

    def _sync(self) -> None:
        """Make the calling thread hold what its innermost call needs: nothing while it is blocked."""
        local = self._threads
        frames = local.frames
        want = frames[-1] if frames and not frames[-1][_BLOCKED] else None
        held = local.held
        if want is not None and held is not _NOT_HELD and held == want[_KEY]:
            return
        if held is not _NOT_HELD:
            local.held = _NOT_HELD
            self._release()
        if want is not None:
            self._acquire(want[_KEY], want[_ENV])
            local.held = want[_KEY]

    # -- the lock ------------------------------------------------------------------------------
    def _acquire(self, key, env) -> None:
        with self._lock:  # the condition's lock (entered directly: cheaper)
            if not self._waiting and not self._switching and (self._holders == 0 or self._current == key) \
                    and (self._holders or key is None):
                self._holders += 1  # the common case: the environment in place, nobody waiting
                return
            ticket = _Ticket(key)
            self._waiting.append(ticket)
            try:
                while not self._may_enter(ticket, key):
                    self._cond.wait(_POLL)  # in slices: a cancel (an exception raised in this thread) lands
            finally:
                self._waiting.remove(ticket)
                self._cond.notify_all()  # the next of this batch may enter too
            self._holders += 1
            if self._current == key:
                return
            self._current = key  # nobody holds the lock: the process is in the job's environment
            self._switching = True
        try:
            steps = self._apply(key, env)
        except BaseException:
            with self._cond:
                self._holders -= 1
                self._current = None
                self._switching = False
                self._cond.notify_all()
            raise
        with self._cond:
            self._steps = steps
            self._switching = False
            self._cond.notify_all()

    def _may_enter(self, ticket, key) -> bool:
        if self._switching or (self._holders and self._current != key):
            return False
        for waiting in self._waiting:  # those before it enter first, unless they are of its environment
            if waiting is ticket:
                return True
            if waiting.key != key:
                return False
        return True

    def _release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders or self._current is None:
                if self._waiting:
                    self._cond.notify_all()
                return
            self._switching = True
            key, steps, self._steps = self._current, self._steps, []
        try:
            self._undo(key, steps)
        finally:
            with self._cond:
                self._current = None
                self._switching = False
                self._cond.notify_all()

    def _apply(self, key, env) -> list:
        """Set ``env`` up in the process (its hook the first time, its modules imported before back in
        ``sys.modules``); return what undoes it."""
        on_path = set(sys.path)
        steps = runtime_env_setup.apply(env, self._package, hook=False, process=False)
        folders = tuple(os.path.join(step[1], "") for step in steps if step[0] == "path" and step[1] not in on_path)
        steps.append(("modules", folders, _hide_shadowed(folders, self._modules.get(key, ()))))
        sys.modules.update(self._modules.pop(key, {}))
        try:
            self._run_hook(key, env, steps)
        except BaseException:
            self._undo(key, steps)
            raise
        return steps

    def _undo(self, key, steps: list) -> None:
        """Put the job's environment back; the modules imported from ``key``'s own folders leave
        ``sys.modules`` with it (kept for its next turn), those they hid come back."""
        for step in steps:
            if step[0] == "modules":
                folders, hidden = step[1], step[2]
                if folders:
                    own = {name: module for name, module in list(sys.modules.items())
                           if _origin(module).startswith(folders)}
                    for name in own:
                        del sys.modules[name]
                    self._modules[key] = own
                for name, module in hidden.items():
                    if module is not None:
                        sys.modules[name] = module
        runtime_env_setup.undo_steps([step for step in steps if step[0] != "modules"])

    def _run_hook(self, key, env, steps: list) -> None:
        hook = env.get("worker_process_setup_hook")
        if hook is None:
            return
        changes = self._hook_changes.get(key)
        if changes is None:
            before = dict(os.environ)
            runtime_env_setup.run_hook(hook)
            after = os.environ
            changes = {name: after.get(name) for name in set(before) | set(after)
                       if before.get(name) != after.get(name)}
            self._hook_changes[key] = changes
            steps += [("env", name, before.get(name)) for name in changes]
            return
        for name, value in changes.items():
            steps.append(("env", name, os.environ.get(name)))
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def _package(self, object_hex: str) -> bytes:
        return self._fetch([ObjectRef(bytes.fromhex(object_hex))])[0]


def _hide_shadowed(folders: tuple, names) -> dict:
    """Take out of ``sys.modules`` what the modules of ``folders`` (first on ``sys.path`` now) and ``names``
    shadow, imported from elsewhere, so that an import finds the environment's own; return them."""
    tops = set()
    for folder in folders:
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        tops.update(name[:-3] if name.endswith(".py") else name for name in entries  # modules and packages
                    if name.endswith(".py") or os.path.isfile(os.path.join(folder, name, "__init__.py")))
    hidden = {}
    for name, module in list(sys.modules.items()):
        if name in names or (name.partition(".")[0] in tops and not _origin(module).startswith(folders)):
            hidden[name] = sys.modules.pop(name)
    return hidden


def _origin(module) -> str:
    """Where ``module`` was imported from (its file, or a namespace package's first folder), or ''."""
    origin = getattr(module, "__file__", None)
    if origin is None:
        path = getattr(module, "__path__", None)
        origin = next(iter(path), None) if path is not None else None
    return origin if isinstance(origin, str) else ""


class _EnvCall:
    """An executor ``Call`` run in its environment's turn; a failed setup fails the call with it."""

    __slots__ = ("_envs", "_call", "_env", "name", "num_returns", "ctx", "_stepping")

    def __init__(self, envs: Environments, call, env):
        self._envs, self._call, self._env = envs, call, env
        self.name, self.num_returns, self.ctx = call.name, call.num_returns, call.ctx
        self._stepping = False

    def _failed(self, error: RuntimeEnvSetupError) -> list:
        return [serialize_failure(RemoteFailure(error))] * self.num_returns

    def run(self, args_blob, deps, fetch) -> list:
        try:
            self._envs.enter(self._env)
        except RuntimeEnvSetupError as error:
            return self._failed(error)
        call = self._call
        if self._stepping or _is_async(call.target):
            # an ``async def`` task: its loop holds the turn step by step, so awaiting a ref lets go of it
            self._envs.leave()
            if not self._stepping:
                self._stepping = True
                call.target = _stepped(call.target, self._envs, self._env)
            return call.run(args_blob, deps, fetch)
        try:
            return call.run(args_blob, deps, fetch)
        finally:
            self._envs.leave()

    async def run_async(self, args_blob, deps, fetch, loop_executor=None) -> list:
        envs = self._envs
        try:
            envs.enter(self._env)  # the first step's turn here: a setup that fails fails the call
        except RuntimeEnvSetupError as error:
            return self._failed(error)
        envs.leave()
        return await _Stepped(self._call.run_async(args_blob, deps, fetch, loop_executor),
                              lambda: envs.enter(self._env), envs.leave)


def _is_async(target) -> bool:
    """Whether ``target`` is an ``async def`` function (its code's flag: cheaper than inspect's, on every task)."""
    code = getattr(target, "__code__", None)
    return bool(code.co_flags & inspect.CO_COROUTINE) if code is not None else inspect.iscoroutinefunction(target)


def _stepped(target, envs: Environments, env):
    """``target`` (an ``async def`` function) with its coroutines stepped in ``env``'s turn."""
    @functools.wraps(target)
    async def stepped(*args, **kwargs):
        return await _Stepped(target(*args, **kwargs), lambda: envs.enter(env), envs.leave)
    return stepped


class _Stepped:
    """Await a coroutine holding an environment's turn during each of its steps, not across its awaits."""

    __slots__ = ("_coro", "_enter", "_leave")

    def __init__(self, coro, enter, leave):
        self._coro, self._enter, self._leave = coro, enter, leave

    def __await__(self):
        coro, value, error = self._coro, None, None
        while True:
            try:
                self._enter()
            except BaseException:
                coro.close()
                raise
            try:
                yielded = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                return stop.value
            finally:
                self._leave()
            try:
                value, error = (yield yielded), None
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - a cancel or an error thrown in: the coroutine gets it
                value, error = None, exc


class EnvActorHost(ActorHost):
    """An actor hosted in the driver whose constructor and calls each run in its environment's turn."""

    def _call_of(self, spec):
        return self._sched.envs.wrap(super()._call_of(spec), self.spec.options.get("runtime_env"))

    def _construct(self) -> bool:
        envs = self._sched.envs
        try:
            envs.enter(self.spec.options.get("runtime_env"))
        except RuntimeEnvSetupError as error:
            self._die(f"The actor {self.spec.cls.name} died: its runtime_env could not be set up: "
                      f"{type(error).__name__}: {error}")
            return False
        try:
            return super()._construct()
        finally:
            envs.leave()

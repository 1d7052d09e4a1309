"""``@remote`` on a class: ActorClass, ActorHandle and ActorMethod."""

from __future__ import annotations

import inspect
import itertools
from typing import Any

from . import generators, ids, pickled_refs
from . import options as opts
from .context import current_task
from .current import current_handle_counter, require_runtime
from .remote_function import _Options, check_arguments, returns_of, signature_of
from .specs import FunctionDescriptor

_METHOD_OPTIONS_ATTR = "__anyray_method_options__"


class ActorExit(SystemExit):
    """Raised by :func:`exit_actor`: the actor ends on purpose (an exit code of 0, as ``sys.exit(0)``)."""


def exit_actor() -> None:
    """End the actor whose method calls this, on purpose, as Ray's ``ray.actor.exit_actor()``.

    The calling method and every call after it fail with ``ActorDiedError``; the
    actor is not restarted, whatever its ``max_restarts`` (``sys.exit(0)`` does the
    same; any other exit code is a crash, and a crashed actor restarts while
    ``max_restarts`` allows)."""
    ctx = current_task.get()
    if ctx is None or ctx.actor_id is None:
        raise TypeError("exit_actor() ends the actor whose method calls it; it was called outside an actor "
                        "method. To end a task early, return from it.")
    raise ActorExit(0)


def exit_is_intended(exc: SystemExit) -> bool:
    """Whether an actor's ``SystemExit`` ends it on purpose (exit code 0: no restart), as in Ray;
    any other code, ``None`` included, is a crash."""
    return exc.code == 0


def method(*args, **kwargs):
    """``@anyray.method(num_returns=2)``: options for one actor method."""
    if args:
        raise TypeError("@anyray.method takes keyword options only, e.g. @anyray.method(num_returns=2).")
    given = opts.validate(kwargs, opts.METHOD_OPTIONS, "@method")

    def mark(fn):
        generators.resolve_num_returns(given, generators.is_generator_function(fn),
                                       f"@method {getattr(fn, '__qualname__', fn)}")
        setattr(fn, _METHOD_OPTIONS_ATTR, given)
        return fn
    return mark


def _methods_of(cls: type) -> dict[str, dict[str, Any]]:
    """Options and signature of each public method, without ``self``."""
    table = {}
    for name, member in inspect.getmembers(cls, predicate=callable):
        if name.startswith("__") and name != "__call__":
            continue
        raw = inspect.getattr_static(cls, name)
        bound_sig = signature_of(member, drop_first=not isinstance(raw, (staticmethod, classmethod)))
        given = getattr(member, _METHOD_OPTIONS_ATTR, {})
        is_generator = generators.is_generator_function(member)
        table[name] = generators.resolve_num_returns(
            {"num_returns": None, "signature": bound_sig, "is_generator": is_generator,
             "is_async": inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member), **given},
            is_generator, f"{cls.__qualname__}.{name}")
    return table


def _with_groups(methods: dict, groups: dict | None, owner: str) -> dict:
    """The methods' options, each knowing the actor's concurrency groups (``"_groups"``: their names) so that
    a call's ``.options(concurrency_group=...)`` is checked at the call site; a method's own group must be one."""
    names = tuple(groups or ())
    for name, meta in methods.items():
        group = meta.get("concurrency_group")
        if group is not None and group not in names:
            raise ValueError(_unknown_group(f"{owner}.{name}", group, names))
    if not names:
        return methods
    return {name: {**meta, "_groups": names} for name, meta in methods.items()}


def _unknown_group(where: str, group: str, names: tuple) -> str:
    declared = f"its concurrency groups are {', '.join(map(repr, names))}" if names else "it declares none"
    return (f"{where}: unknown concurrency group {group!r}: {declared}. Declare it with "
            f"@remote(concurrency_groups={{{group!r}: N}}) on the actor class, or leave the group out to use the "
            f"default group (max_concurrency calls at once).")


class ActorClass:
    """A class made remote. ``Cls.remote(...)`` starts an actor and returns its handle."""

    def __init__(self, cls: type, options: dict[str, Any]):
        self._cls = cls
        name = cls.__qualname__
        self._given = opts.validate(options, opts.ACTOR_OPTIONS, f"@remote class {name}")
        self._options = {**opts.ACTOR_DEFAULTS, **self._given}
        self._methods = _methods_of(cls)
        self._is_async = any(m["is_async"] for m in self._methods.values())
        self._descriptor = FunctionDescriptor(ids.new_id(), name, cls)
        self._init_signature = signature_of(cls)
        self.__name__ = cls.__name__
        self.__qualname__ = name
        self.__doc__ = cls.__doc__

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actors cannot be instantiated directly. Instead of '{self.__name__}()', "
                        f"use '{self.__name__}.remote()'.")

    def remote(self, *args, **kwargs):
        return self._submit(args, kwargs, self._options, None)

    def options(self, **overrides):
        return self._with_options(self._options, overrides)

    def _with_options(self, base: dict, overrides: dict):
        if "concurrency_groups" in overrides:  # as in Ray: an actor class's groups are fixed by @remote
            raise ValueError(f"{self.__qualname__}.options(): setting 'concurrency_groups' is not supported in "
                             f"'.options()'; declare them in @remote(concurrency_groups=...) on the class.")
        given = opts.validate(overrides, opts.ACTOR_OPTIONS, f"{self.__qualname__}.options()")
        return _Options(self, {**base, **given}, None)

    def _submit(self, args, kwargs, options, _resources):
        check_arguments(self._init_signature, args, kwargs, self.__qualname__)
        if options["get_if_exists"] and not options["name"]:
            raise ValueError(f"{self.__qualname__}: get_if_exists=True needs a name to look the actor up by; "
                             f"pass .options(name=..., get_if_exists=True).")
        methods = _with_groups(self._methods, options.get("concurrency_groups"), self.__qualname__)
        return require_runtime().create_actor(self._descriptor, args, kwargs, options, self._is_async, methods)

    def __reduce__(self):
        return ActorClass, (self._cls, self._given)

    def __repr__(self) -> str:
        return f"<anyray actor class {self.__qualname__}>"


class ActorHandle:
    """A reference to a live actor; pass it to tasks and other actors freely.

    Each handle object is one caller: calls made through it start in the
    order they were made. ``native`` is a backend's own handle, if it has one.
    """

    def __init__(self, actor_id: bytes, class_name: str, methods: dict, native=None):
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self.native = native
        self._caller_id = ids.new_id()
        self._seq = itertools.count()
        self._counter = current_handle_counter()
        if self._counter is not None:
            self._counter.incref(actor_id)

    def __del__(self):
        counter = self.__dict__.get("_counter")
        if counter is not None:
            try:
                counter.decref(self._actor_id)
            except Exception:  # interpreter shutdown: nothing left to stop
                pass

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        meta = self._methods.get(name)
        if meta is None:
            raise AttributeError(f"Actor {self._class_name} has no method {name!r}; "
                                 f"its methods are: {', '.join(sorted(self._methods))}.")
        return ActorMethod(self, name, meta)

    def __reduce__(self):
        pickled_refs.note_ref_pickled(self)  # a stored value holding the handle keeps the actor
        return ActorHandle, (self._actor_id, self._class_name, self._methods, self.native)

    def __eq__(self, other):
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self):
        return hash(self._actor_id)

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id.hex()[-12:]})"


class ActorMethod:
    __slots__ = ("_handle", "_name", "_meta")

    def __init__(self, handle: ActorHandle, name: str, meta: dict):
        self._handle = handle
        self._name = name
        self._meta = meta

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actor methods cannot be called directly. Instead of running "
                        f"'{self._name}()', try '{self._name}.remote()'.")

    def remote(self, *args, **kwargs):
        return self._submit(args, kwargs, self._meta, None)

    def options(self, **overrides):
        return self._with_options(self._meta, overrides)

    def _with_options(self, base: dict, overrides: dict):
        owner = f"{self._handle._class_name}.{self._name}.options()"
        given = opts.validate(overrides, opts.METHOD_OPTIONS, owner)
        group = given.get("concurrency_group")
        if group is not None and group not in base.get("_groups", ()):
            raise ValueError(_unknown_group(owner, group, base.get("_groups", ())))
        return _Options(self, generators.resolve_num_returns({**base, **given}, base.get("is_generator", False), owner),
                        None)

    def _submit(self, args, kwargs, meta, _resources):
        h = self._handle
        check_arguments(meta["signature"], args, kwargs, f"{h._class_name}.{self._name}")
        refs = require_runtime().submit_actor_task(h, self._name, args, kwargs, meta)
        return returns_of(refs, meta)

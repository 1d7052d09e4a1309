"""``@remote`` on a function: a RemoteFunction whose ``.remote()`` submits a task."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from . import generators, ids
from . import options as opts
from .current import require_runtime
from .specs import FunctionDescriptor


class ArgumentCheck:
    """Checks a call's arguments against a signature at ``.remote()``.

    Positional-only calls whose count fits are accepted without binding
    (binding costs more than the rest of a submit); anything else is bound,
    so errors carry Python's own message.
    """

    __slots__ = ("signature", "_min", "_max")

    def __init__(self, signature: inspect.Signature):
        P = inspect.Parameter
        params = signature.parameters.values()
        positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
        kw_required = any(p.kind is P.KEYWORD_ONLY and p.default is P.empty for p in params)
        self.signature = signature
        self._min = sum(p.default is P.empty for p in positional) if not kw_required else 1 << 30
        self._max = (1 << 30) if any(p.kind is P.VAR_POSITIONAL for p in params) else len(positional)

    def check(self, args: tuple, kwargs: dict, name: str) -> None:
        if not kwargs and self._min <= len(args) <= self._max:
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{name}.remote(): {exc}; the signature is {name}{self.signature}.") from None


def signature_of(fn: Callable, drop_first: bool = False) -> ArgumentCheck | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return None
    if drop_first:
        sig = sig.replace(parameters=list(sig.parameters.values())[1:])
    return ArgumentCheck(sig)


def check_arguments(check: ArgumentCheck | None, args: tuple, kwargs: dict, name: str) -> None:
    if check is not None:
        check.check(args, kwargs, name)


class _Options:
    """The result of ``.options(...)``: the same target with some options replaced."""

    __slots__ = ("_owner", "_options", "_resources")

    def __init__(self, owner, options: dict, resources: dict):
        self._owner = owner
        self._options = options
        self._resources = resources

    def remote(self, *args, **kwargs):
        return self._owner._submit(args, kwargs, self._options, self._resources)

    def options(self, **overrides):
        return self._owner._with_options(self._options, overrides)


def returns_of(refs, options: dict):
    """What ``.remote()`` gives back for the return ``refs`` of a call with these options (for a stream,
    ``refs`` may be the generator an engine's scheduler made)."""
    num_returns = options["num_returns"]
    if num_returns == 1:
        return refs[0]
    if num_returns == generators.STREAMING:
        if isinstance(refs, generators.ObjectRefGenerator):
            return refs  # the engine's own, which its scheduler made
        backpressure = options.get("_generator_backpressure_num_objects")
        return generators.StoreObjectRefGenerator(refs[0], generators.NO_BACKPRESSURE if backpressure is None
                                                  else backpressure)
    if num_returns == 0:
        return None
    if num_returns == generators.DYNAMIC:
        return refs[0]  # it resolves to a DynamicObjectRefGenerator
    return refs


class RemoteFunction:
    """A function made remote. ``f.remote(...)`` returns ObjectRefs at once."""

    def __init__(self, function: Callable, options: dict[str, Any], function_id: bytes | None = None):
        self._function = function
        name = getattr(function, "__qualname__", getattr(function, "__name__", repr(function)))
        self._given = opts.validate(options, opts.TASK_OPTIONS, f"@remote {name}")
        self._is_generator = generators.is_generator_function(function)
        self._options = generators.resolve_num_returns({**opts.TASK_DEFAULTS, "num_returns": None, **self._given},
                                                       self._is_generator, f"@remote {name}")
        self._resources = opts.resource_demand(self._options)
        self._descriptor = FunctionDescriptor(function_id or ids.new_id(), name, function)
        self._signature = signature_of(function)
        self.__name__ = getattr(function, "__name__", name)
        self.__qualname__ = name
        self.__doc__ = getattr(function, "__doc__", None)
        self.__wrapped__ = function

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Remote functions cannot be called directly. Instead of running "
                        f"'{self.__name__}()', try '{self.__name__}.remote()'.")

    def remote(self, *args, **kwargs):
        check = self._signature  # _submit, inlined for the common call: this runs once per task
        if check is not None and (kwargs or not check._min <= len(args) <= check._max):
            check.check(args, kwargs, self.__qualname__)
        options = self._options
        refs = require_runtime().submit_task(self._descriptor, args, kwargs, options, self._resources)
        return refs[0] if options["num_returns"] == 1 else returns_of(refs, options)

    def options(self, **overrides):
        return self._with_options(self._options, overrides)

    def _with_options(self, base: dict, overrides: dict):
        owner = f"{self.__qualname__}.options()"
        given = opts.validate(overrides, opts.TASK_OPTIONS, owner)
        merged = generators.resolve_num_returns({**base, **given}, self._is_generator, owner)
        return _Options(self, merged, opts.resource_demand(merged))

    def _submit(self, args: tuple, kwargs: dict, options: dict, resources: dict):
        check_arguments(self._signature, args, kwargs, self.__qualname__)
        refs = require_runtime().submit_task(self._descriptor, args, kwargs, options, resources)
        return returns_of(refs, options)

    def __reduce__(self):
        return RemoteFunction, (self._function, self._given, self._descriptor.function_id)

    def __repr__(self) -> str:
        return f"<anyray remote function {self.__qualname__}>"

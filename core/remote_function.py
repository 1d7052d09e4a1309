"""``@remote`` on a function: a RemoteFunction whose ``.remote()`` submits a task."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from . import ids
from . import options as opts
from .specs import FunctionDescriptor


def signature_of(fn: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return None


def check_arguments(signature: inspect.Signature | None, args: tuple, kwargs: dict, name: str) -> None:
    if signature is None:
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{name}.remote(): {exc}; the signature is {name}{signature}.") from None


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


def returns_of(refs: list, num_returns: int):
    if num_returns == 1:
        return refs[0]
    if num_returns == 0:
        return None
    return refs


class RemoteFunction:
    """A function made remote. ``f.remote(...)`` returns ObjectRefs at once."""

    def __init__(self, function: Callable, options: dict[str, Any], function_id: bytes | None = None):
        self._function = function
        name = getattr(function, "__qualname__", getattr(function, "__name__", repr(function)))
        self._given = opts.validate(options, opts.TASK_OPTIONS, f"@remote {name}")
        self._options = {**opts.TASK_DEFAULTS, **self._given}
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
        return self._submit(args, kwargs, self._options, self._resources)

    def options(self, **overrides):
        return self._with_options(self._options, overrides)

    def _with_options(self, base: dict, overrides: dict):
        given = opts.validate(overrides, opts.TASK_OPTIONS, f"{self.__qualname__}.options()")
        merged = {**base, **given}
        return _Options(self, merged, opts.resource_demand(merged))

    def _submit(self, args: tuple, kwargs: dict, options: dict, resources: dict):
        from .api import _runtime

        check_arguments(self._signature, args, kwargs, self.__qualname__)
        refs = _runtime().submit_task(self._descriptor, args, kwargs, options, resources)
        return returns_of(refs, options["num_returns"])

    def __reduce__(self):
        return RemoteFunction, (self._function, self._given, self._descriptor.function_id)

    def __repr__(self) -> str:
        return f"<anyray remote function {self.__qualname__}>"

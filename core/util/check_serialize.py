"""``ray.util.inspect_serializability``: find what in an object does not pickle.

It pickles the object with cloudpickle (what tasks and actors are sent with); if that fails it walks
what the object holds (a function's nonlocal and global variables, an object's attributes, a class's
methods) down to ``depth`` levels, prints the tree of what failed, and returns the innermost failures.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, TextIO

import cloudpickle

_TROUBLESHOOTING = "https://docs.ray.io/en/master/ray-core/objects/serialization.html#troubleshooting"


class FailureTuple:
    """One value that failed to serialize: the object ``obj``, ``path`` (the tuple of names from the
    inspected object down to it) and the ``parent`` holding it. ``name`` is the last name of the path (the
    field Ray's earlier ``FailTuple`` had)."""

    def __init__(self, obj: Any, path: tuple[str, ...], parent: Any):
        self.obj = obj
        self.path = path
        self.parent = parent

    @property
    def name(self) -> str:
        return self.path[-1] if self.path else "unknown"

    def __repr__(self) -> str:
        return f"FailTuple({self.name} [path={' -> '.join(self.path)}, obj={self.obj}, parent={self.parent}])"


FailTuple = FailureTuple  # Ray's earlier name


def _pickle_error(obj) -> Exception | None:
    try:
        cloudpickle.dumps(obj)
    except Exception as exc:
        return exc
    return None


def _children(obj) -> list[tuple[str, str, dict[str, Any]]]:
    """What ``obj`` holds, as (heading, kind, {name: value}) groups, for the walk to check one by one."""
    if inspect.isfunction(obj):
        found = inspect.getclosurevars(obj)
        return [("global", "Detected {} global variables. Checking serializability...", dict(found.globals)),
                ("nonlocal", "Detected {} nonlocal variables. Checking serializability...",
                 dict(found.nonlocals))]
    if inspect.isclass(obj):
        methods = {k: v for k, v in vars(obj).items() if inspect.isfunction(v)}
        return [("method", "Detected {} methods. Checking serializability...", methods)]
    state = getattr(obj, "__dict__", None)
    if isinstance(state, dict):
        return [("attribute", "", dict(state))]
    return []


class _Walk:
    def __init__(self, out: TextIO):
        self.out = out
        self.failures: set[FailureTuple] = set()

    def say(self, level: int, text: str) -> None:
        print("    " * level + text, file=self.out)

    def inspect(self, obj, name: str, path: list[str], depth: int, level: int) -> bool:
        """Check the values ``obj`` holds (``obj`` itself failed); record the failures found at the bottom.
        Whether any held value failed."""
        if inspect.isfunction(obj):
            self.say(level, f"Inspecting closure of {obj.__qualname__!r}:")
        found_any = False
        for _, heading, values in _children(obj):
            if not values:
                continue
            if heading:
                self.say(level, heading.format(len(values)))
            for child_name, child in values.items():
                error = _pickle_error(child)
                self.say(level + 1, f"Serializing {child_name!r} {child}...")
                if error is None:
                    continue
                found_any = True
                self.say(level + 1, f"!!! FAIL serialization: {error}")
                child_path = [*path, child_name]
                deeper = depth > 1 and self.inspect(child, child_name, child_path, depth - 1, level + 1)
                if not deeper:
                    self.failures.add(FailureTuple(child, tuple(child_path), obj))
                    if depth > 1:
                        self.say(level + 1, f"WARNING: Did not find non-serializable object in {child_name} "
                                            "instance. Call inspect_serializability on its parts to narrow it down.")
        return found_any


def inspect_serializability(obj: Any, name: str | None = None, depth: int = 3,
                            print_file: TextIO | None = None) -> tuple[bool, set[FailureTuple]]:
    """Whether ``obj`` serializes, and the set of ``FailureTuple`` of what does not (empty when it does).

    The report goes to ``print_file`` (standard output by default). ``depth`` is how many levels of held
    values are walked below ``obj``; ``name`` is how the report calls ``obj``.
    """
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"inspect_serializability(depth=...) takes an int of 1 or more, got {depth!r}")
    out = print_file if print_file is not None else sys.stdout
    title = f"Checking Serializability of {obj}"
    rule = "=" * min(max(len(title), 40), 120)
    print(rule, file=out)
    print(title, file=out)
    print(rule, file=out)
    error = _pickle_error(obj)
    if error is None:
        return True, set()
    print(f"!!! FAIL serialization: {error}", file=out)
    walk = _Walk(out)
    label = name if name is not None else getattr(obj, "__name__", type(obj).__name__)
    found = walk.inspect(obj, label, [name] if name is not None else [], depth, 0)
    if not found:
        # Nothing inside failed on its own: the object itself is what does not serialize.
        walk.failures.add(FailureTuple(obj, (label,), None))
    print(rule, file=out)
    print("Variable: \n", file=out)
    for failure in walk.failures:
        print(f"\t{failure}", file=out)
    print("\nwas found to be non-serializable. There may be multiple other undetected variables that were "
          "non-serializable. \nConsider either removing the instantiation/imports of these variables or "
          "moving the instantiation into the scope of the function/class. ", file=out)
    print(rule, file=out)
    print(f"Check {_TROUBLESHOOTING} for more information.", file=out)
    print(rule, file=out)
    return False, walk.failures

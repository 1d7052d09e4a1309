"""Validation of ``@remote`` and ``.options()`` keywords, written once for every backend.

Each option has a checker that raises at the call site: ``TypeError`` for a
value of the wrong type, ``ValueError`` for a wrong value or an unknown name,
each saying what was wrong and what to write instead.
"""

from __future__ import annotations

import numbers
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from . import runtime_env

Checker = Callable[[str, Any, str], Any]


def _number(minimum: float = 0) -> Checker:
    def check(name, value, owner):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{owner}: option {name!r} must be a number, got {type(value).__name__} {value!r}.")
        if value < minimum:
            raise ValueError(f"{owner}: option {name!r} must be >= {minimum}, got {value!r}.")
        return value
    return check


def _integer(minimum: int) -> Checker:
    def check(name, value, owner):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{owner}: option {name!r} must be an int, got {type(value).__name__} {value!r}.")
        if value < minimum:
            hint = " (-1 means unlimited)" if minimum == -1 else ""
            raise ValueError(f"{owner}: option {name!r} must be >= {minimum}{hint}, got {value!r}.")
        return int(value)
    return check


def _boolean(name, value, owner):
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: option {name!r} must be True or False, got {value!r}.")
    return value


def _optional_str(name, value, owner):
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{owner}: option {name!r} must be a string or None, got {type(value).__name__}.")
    return value


def _num_returns(name, value, owner):
    if value == "streaming" or value == "dynamic":
        return value  # a generator's: whether the function is one is checked where it is known
    if isinstance(value, str):
        raise ValueError(f"{owner}: num_returns={value!r} is not valid; use a non-negative int, "
                         f"'streaming' or 'dynamic' (for generator functions).")
    if value is None:
        return None  # Ray's default: one value, or a stream for a generator function
    return _integer(0)(name, value, owner)


def _backpressure(name, value, owner):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: option {name!r} must be an int or None, got {type(value).__name__} {value!r}.")
    if value == 0 or value < -1:
        raise ValueError(f"{owner}: {name}={value!r} is not allowed; use a value > 0 (how many values a "
                         f"generator may yield ahead of its consumer), or -1 to disable backpressure.")
    return int(value)


def _resources(name, value, owner):
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{owner}: option 'resources' must be a dict of name to amount, got {type(value).__name__}.")
    out = {}
    for key, amount in value.items():
        if not isinstance(key, str):
            raise TypeError(f"{owner}: resource names must be strings, got {key!r}.")
        if key in ("CPU", "GPU"):
            raise ValueError(f"{owner}: use num_cpus / num_gpus instead of {key!r} in 'resources'.")
        out[key] = _number()(f"resources[{key!r}]", amount, owner)
    return out


def _retry_exceptions(name, value, owner):
    if isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(t, type) and issubclass(t, BaseException) for t in value):
        return tuple(value)
    raise TypeError(f"{owner}: option 'retry_exceptions' must be a bool or a list of exception classes, got {value!r}.")


def _label_selector(name, value, owner):
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TypeError(f"{owner}: option 'label_selector' must be a dict of label name to value (strings), "
                        f"got {value!r}.")
    return dict(value)


def _metadata(name, value, owner):
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"{owner}: option '_metadata' must be a dict or None, got {type(value).__name__}.")
    return value


def _lifetime(name, value, owner):
    if value not in (None, "detached", "non_detached"):
        raise ValueError(f"{owner}: option 'lifetime' must be None, 'detached' or 'non_detached', got {value!r}.")
    return value


def _strategy(name, value, owner):
    """None, "DEFAULT", "SPREAD", or a strategy of ``anyray.util.scheduling_strategies``; a bundle index is
    checked against its group here, a demand against the group's bundles in :func:`resource_demand`."""
    from .util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

    if value is None or isinstance(value, NodeAffinitySchedulingStrategy):
        return value
    if isinstance(value, str):
        if value not in ("DEFAULT", "SPREAD"):
            raise ValueError(f"{owner}: Invalid scheduling_strategy value {value!r}. Valid values are "
                             f"[\"DEFAULT\" | \"SPREAD\" | PlacementGroupSchedulingStrategy | "
                             f"NodeAffinitySchedulingStrategy] (from anyray.util.scheduling_strategies).")
        return value
    if not isinstance(value, PlacementGroupSchedulingStrategy):
        raise TypeError(f"{owner}: scheduling_strategy must be \"DEFAULT\", \"SPREAD\", a "
                        f"PlacementGroupSchedulingStrategy or a NodeAffinitySchedulingStrategy, got "
                        f"{type(value).__name__} {value!r}.")
    group, index = value.placement_group, value.placement_group_bundle_index
    if group is None or group.is_empty:
        if index != -1:
            raise ValueError(f"{owner}: If placement group is not set, the value of bundle index must be -1 "
                             f"(got placement_group_bundle_index={index}).")
    elif not -1 <= index < group.bundle_count:
        raise ValueError(f"{owner}: placement group bundle index {index} is invalid: the group has "
                         f"{group.bundle_count} bundle(s), so use 0 to {group.bundle_count - 1}, or -1 for any.")
    return value


def _old_placement_group(name, value, owner):
    from .util.placement_group import PlacementGroup

    if value is None or value == "default" or isinstance(value, PlacementGroup):
        return value
    raise TypeError(f"{owner}: option 'placement_group' must be a PlacementGroup, None or 'default', got "
                    f"{type(value).__name__} {value!r}.")


def _concurrency_groups(name, value, owner):
    """Ray's ``concurrency_groups``: {group name: how many of its calls may run at once}."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"{owner}: option {name!r} must be a dict of group name to size, e.g. "
                        f"{{'io': 2, 'compute': 4}}; got {type(value).__name__} {value!r}.")
    out = {}
    for group, size in value.items():
        if not isinstance(group, str) or not group:
            raise TypeError(f"{owner}: option {name!r}: a group's name must be a non-empty str, got {group!r}.")
        out[group] = _integer(1)(f"{name}[{group!r}]", size, owner)
    return out


def _runtime_env(name, value, owner):
    return runtime_env.validate(value, owner)


def _optional_bool(name, value, owner):
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{owner}: option {name!r} must be True, False or None, got {value!r}.")
    return value


# Ray's options from before scheduling_strategy; validate() folds them into one.
_OLD_PLACEMENT = {"placement_group": "default", "placement_group_bundle_index": -1,
                  "placement_group_capture_child_tasks": None}


def _fold_old_placement(out: dict, owner: str) -> None:
    """Turn the deprecated placement options in ``out`` into ``scheduling_strategy``, warning as Ray does."""
    given = {k: out.pop(k) for k in _OLD_PLACEMENT if k in out}
    if not given:
        return
    for key, value in given.items():
        if value != _OLD_PLACEMENT[key]:
            warnings.warn(f"{owner}: {key} parameter is deprecated. Use scheduling_strategy="
                          f"PlacementGroupSchedulingStrategy(...) instead (from anyray.util.scheduling_strategies).",
                          DeprecationWarning, stacklevel=_caller_level())
    group = given.get("placement_group", "default")
    index = given.get("placement_group_bundle_index", -1)
    if group not in ("default", None) and "scheduling_strategy" in out:
        raise ValueError(f"{owner}: Placement groups should be specified via the scheduling_strategy option. "
                         f"The placement_group option is deprecated: pass only scheduling_strategy="
                         f"PlacementGroupSchedulingStrategy(...).")
    if group == "default":
        if index != -1:
            raise ValueError(f"{owner}: If placement group is not set, the value of bundle index must be -1 "
                             f"(got placement_group_bundle_index={index}).")
        return  # capture_child_tasks alone: nothing to capture outside a group
    from .util.scheduling_strategies import PlacementGroupSchedulingStrategy

    strategy = PlacementGroupSchedulingStrategy(group, index, given.get("placement_group_capture_child_tasks"))
    out["scheduling_strategy"] = _strategy("scheduling_strategy", strategy, owner)


def _caller_level() -> int:
    """The stacklevel of the first frame outside anyray, so a warning points at the user's line."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("anyray"):
        frame, level = frame.f_back, level + 1
    return level


_COMMON: dict[str, Checker] = {
    "num_cpus": _number(),
    "num_gpus": _number(),
    "memory": _number(),
    "resources": _resources,
    "name": _optional_str,
    "scheduling_strategy": _strategy,
    "placement_group": _old_placement_group,
    "placement_group_bundle_index": _integer(-1),
    "placement_group_capture_child_tasks": _optional_bool,
    # Asks for the resource "accelerator_type:<TYPE>" (see resource_demand), as Ray does.
    "accelerator_type": _optional_str,
    # Accepted as in Ray, and change nothing here: anyray nodes carry no labels, task events are
    # always recorded (timeline, error_info), and metadata is not read by any backend.
    "label_selector": _label_selector,
    "enable_task_events": _boolean,
    "_metadata": _metadata,
    "runtime_env": _runtime_env,
}

TASK_OPTIONS: dict[str, Checker] = {
    **_COMMON,
    "num_returns": _num_returns,
    "_generator_backpressure_num_objects": _backpressure,
    "max_retries": _integer(-1),
    "retry_exceptions": _retry_exceptions,
    "max_calls": _integer(0),
}

ACTOR_OPTIONS: dict[str, Checker] = {
    **_COMMON,
    "namespace": _optional_str,
    "lifetime": _lifetime,
    "max_restarts": _integer(-1),
    "max_task_retries": _integer(-1),
    "max_concurrency": _integer(1),
    "max_pending_calls": _integer(-1),
    "get_if_exists": _boolean,
    "concurrency_groups": _concurrency_groups,
}

METHOD_OPTIONS: dict[str, Checker] = {
    "num_returns": _num_returns,
    "_generator_backpressure_num_objects": _backpressure,
    "enable_task_events": _boolean,
    "name": _optional_str,
    "max_task_retries": _integer(-1),
    "retry_exceptions": _retry_exceptions,
    "concurrency_group": _optional_str,
}

ALIASES = {"num_return_vals": "num_returns"}

_COMMON_DEFAULTS = {"num_gpus": 0, "memory": 0, "resources": {}, "name": None, "scheduling_strategy": None,
                    "accelerator_type": None, "label_selector": None, "enable_task_events": True, "_metadata": None,
                    "runtime_env": None}
TASK_DEFAULTS = {**_COMMON_DEFAULTS, "num_returns": 1, "num_cpus": 1, "max_retries": 3, "retry_exceptions": False,
                 "max_calls": 0}
ACTOR_DEFAULTS = {**_COMMON_DEFAULTS, "num_cpus": 0, "namespace": None, "lifetime": None, "max_restarts": 0,
                  "max_task_retries": 0, "max_concurrency": None, "max_pending_calls": -1, "get_if_exists": False}
# Ray's resource that accelerator_type=X asks for, and how much of it: a node has it when it has that type.
ACCELERATOR_PREFIX = "accelerator_type:"
ACCELERATOR_AMOUNT = 0.001


def validate(options: Mapping[str, Any], allowed: Mapping[str, Checker], owner: str) -> dict[str, Any]:
    """Check ``options`` against ``allowed``; return them normalized (aliases resolved)."""
    out = {}
    for name, value in options.items():
        name = ALIASES.get(name, name)
        checker = allowed.get(name)
        if checker is None:
            import difflib  # only to word an error

            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{owner}: unknown option {name!r}.{hint} "
                             f"Valid options are: {', '.join(sorted(allowed))}.")
        out[name] = checker(name, value, owner)
    _fold_old_placement(out, owner)
    return out


def resource_demand(opts: Mapping[str, Any]) -> dict[str, float]:
    """The resources a task or actor holds while it runs, without zero entries.

    Raises ``ValueError`` when it is to run in a placement group none of whose bundles can hold it."""
    demand = {"CPU": opts["num_cpus"], "GPU": opts["num_gpus"], "memory": opts["memory"], **opts["resources"]}
    if opts.get("accelerator_type"):
        demand[ACCELERATOR_PREFIX + opts["accelerator_type"]] = ACCELERATOR_AMOUNT
    demand = {k: float(v) for k, v in demand.items() if v}
    _check_fits_a_bundle(opts.get("scheduling_strategy"), demand)
    return demand


def _check_fits_a_bundle(strategy, demand: dict[str, float]) -> None:
    group = getattr(strategy, "placement_group", None)  # set on a PlacementGroupSchedulingStrategy only
    if group is None or group.is_empty:
        return
    bundles = group.bundle_specs
    if not any(all(bundle.get(k, 0) >= v for k, v in demand.items()) for bundle in bundles):
        raise ValueError(f"Cannot schedule a task or actor that asks for {demand} with the placement group "
                         f"{group.id.hex()}, because the resource request cannot fit into any bundles for the "
                         f"placement group, {bundles}. Ask for what one bundle holds (a task takes num_cpus=1 "
                         f"unless told otherwise), or make the group with a bundle that holds it.")

"""Ray's exceptions, translated into ``anyray.exceptions`` at the adapter boundary.

Every Ray call the plugin makes on behalf of the user goes through
:func:`translate` (``raise translate(exc) from exc``), so user code catches
anyray's types whatever engine runs it, and the Ray error stays reachable as
``__cause__``. Errors of the user's own code never take this path: the core's
executor catches them inside the Ray worker and stores them as values.
"""

from __future__ import annotations

from ray import exceptions as rx

from anyray import exceptions as ae
from anyray.backend_kit import ErrorMap
from anyray.backend_kit.errors import text


def _task_error(exc, what: str) -> BaseException:
    """A Ray task failed outside the user's code (or Ray wrapped an error of ours)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ae.AnyrayError):
        return cause  # raised on purpose by the plugin's worker side (an actor's constructor, say)
    if isinstance(cause, rx.RayError):
        return translate(cause, what)
    name = getattr(exc, "function_name", None) or what or "task"
    err = ae.TaskError(name, getattr(exc, "traceback_str", None) or text(exc), cause, getattr(exc, "pid", None))
    return err.as_instanceof_cause()


def _reason_name(reason) -> str | None:
    """Ray's ``ErrorType`` number as its name (``OBJECT_UNRECONSTRUCTABLE_...``), as anyray's reasons are."""
    if reason is None or isinstance(reason, str):
        return reason
    try:
        from ray.core.generated.common_pb2 import ErrorType
        return ErrorType.Name(reason)
    except Exception:  # noqa: BLE001 - a Ray without the name: the number says it still
        return str(reason)


# Most specific first: several Ray errors subclass others.
ERRORS = ErrorMap("Ray", [
    (rx.RayTaskError, _task_error),
    (rx.GetTimeoutError, ae.GetTimeoutError),
    (rx.TaskCancelledError, ae.TaskCancelledError),
    (rx.ActorUnavailableError, ae.ActorUnavailableError),
    (rx.RayActorError, ae.ActorDiedError),
    (rx.ActorUnschedulableError, ae.ActorUnschedulableError),
    (rx.TaskUnschedulableError, ae.TaskUnschedulableError),
    (rx.TaskPlacementGroupRemoved, ae.TaskPlacementGroupRemoved),
    (rx.ActorPlacementGroupRemoved, ae.ActorDiedError),
    (rx.WorkerCrashedError, ae.WorkerCrashedError),
    (rx.OutOfMemoryError, ae.OutOfMemoryError),
    (rx.RuntimeEnvSetupError, lambda exc, what: ae.RuntimeEnvSetupError(getattr(exc, "error_message", None))),
    (rx.LocalRayletDiedError, ae.NodeDiedError),
    (rx.NodeDiedError, ae.NodeDiedError),
    (rx.OwnerDiedError, ae.OwnerDiedError),
    (rx.ObjectFetchTimedOutError, ae.ObjectFetchTimedOutError),
    (rx.ObjectReconstructionFailedError,
     lambda exc, what: ae.ObjectReconstructionFailedError(str(exc), _reason_name(getattr(exc, "reason", None)))),
    (rx.ObjectLostError, ae.ObjectLostError),
    (rx.ObjectStoreFullError, ae.ObjectStoreFullError),
    (rx.OutOfDiskError, ae.ObjectStoreFullError),
    (rx.ObjectRefStreamEndOfStreamError, ae.ObjectRefStreamEndOfStreamError),
    (rx.RaySystemError, ae.RaySystemError),
], catches=rx.RayError)


def translate(exc: BaseException, what: str = "") -> BaseException:
    """The anyray exception for Ray's ``exc`` (``exc`` itself if it is not Ray's).

    ``what`` names the task or call, for the message of errors that do not
    already say it.
    """
    return ERRORS.translate(exc, what)

"""Errors of tasks: their types and text, propagation, retries, and the job's error log.

Proves that ``get`` of a failed task raises a ``TaskError`` that is also an
instance of the user's exception class, keeps the raised exception and its
fields, and carries the remote traceback;
that Ray's exception names are aliases; that a failure flows through tasks
that depend on it; that ``max_retries`` with ``retry_exceptions`` retries
application errors (all of them, or the listed classes only); and that
``error_info()`` and ``timeline()`` describe what ran.
"""

import json

import pytest

import anyray
from anyray import exceptions
from anyray.conformance.helpers import Recorder, assert_runtime_works, echo

pytestmark = pytest.mark.usefixtures("anyray_session")


class QuotaExceeded(Exception):
    """A user's exception with fields of its own (pickled with its args, as exceptions are)."""

    def __init__(self, message, limit=None):
        super().__init__(message, limit)
        self.limit = limit
        self.tenant = "acme"


def test_task_error_is_an_instance_of_the_users_exception_class():
    @anyray.remote
    def spend_over_quota():
        raise QuotaExceeded("over quota", 3)

    with pytest.raises(QuotaExceeded, match="over quota") as info:
        anyray.get(spend_over_quota.remote())
    error = info.value
    assert isinstance(error, exceptions.TaskError)
    assert isinstance(error, exceptions.RayTaskError)
    assert isinstance(error, exceptions.AnyrayError)
    assert issubclass(type(error), QuotaExceeded) and issubclass(type(error), exceptions.TaskError)
    assert "QuotaExceeded" in type(error).__name__
    # The exception the task raised, and its fields, survive the trip.
    assert type(error.cause) is QuotaExceeded
    assert error.cause.args == ("over quota", 3)
    assert (error.cause.limit, error.cause.tenant) == (3, "acme")
    assert (error.limit, error.tenant) == (3, "acme")
    text = str(error)
    assert "Traceback (most recent call last)" in text
    assert "in spend_over_quota" in text
    assert "QuotaExceeded: ('over quota', 3)" in text


def test_builtin_exceptions_can_be_caught_by_their_class():
    @anyray.remote
    def divide(a, b):
        return a / b

    try:
        anyray.get(divide.remote(1, 0))
    except ZeroDivisionError as exc:
        assert isinstance(exc, exceptions.TaskError)
    else:
        pytest.fail("ZeroDivisionError was not raised")


def test_task_error_str_holds_the_remote_traceback():
    @anyray.remote
    def deep_failure():
        def inner_helper():
            raise ValueError("marker-8731")
        inner_helper()

    with pytest.raises(exceptions.TaskError) as info:
        anyray.get(deep_failure.remote())
    text = str(info.value)
    assert "Traceback (most recent call last)" in text
    assert "deep_failure" in text
    assert "inner_helper" in text
    assert "ValueError: marker-8731" in text


def test_ray_exception_names_are_aliases():
    assert exceptions.RayError is exceptions.AnyrayError
    assert exceptions.RayTaskError is exceptions.TaskError
    assert issubclass(exceptions.ActorDiedError, exceptions.RayActorError)
    for name in ("TaskError", "GetTimeoutError", "ActorDiedError", "WorkerCrashedError", "ObjectLostError",
                 "TaskCancelledError", "ObjectStoreFullError", "NodeDiedError", "BackendNotFoundError"):
        assert issubclass(getattr(exceptions, name), exceptions.AnyrayError), name
    assert issubclass(exceptions.GetTimeoutError, TimeoutError)


def test_an_error_propagates_through_dependent_tasks():
    recorder = Recorder.remote()

    @anyray.remote
    def fail():
        raise KeyError("upstream broke")

    @anyray.remote
    def downstream(value, recorder):
        anyray.get(recorder.record.remote("downstream ran"))
        return value

    ref = downstream.remote(fail.remote(), recorder)
    with pytest.raises(KeyError, match="upstream broke") as info:
        anyray.get(ref)
    assert isinstance(info.value, exceptions.TaskError)
    assert "fail" in str(info.value)
    further = downstream.remote(ref, recorder)
    with pytest.raises(KeyError, match="upstream broke"):
        anyray.get(further)
    assert anyray.get(recorder.entries.remote()) == []


def test_an_error_raised_by_a_nested_get_reaches_the_caller():
    @anyray.remote
    def fail():
        raise IndexError("nested failure")

    @anyray.remote
    def outer():
        return anyray.get(fail.remote())

    with pytest.raises(IndexError, match="nested failure"):
        anyray.get(outer.remote())


def test_get_of_a_list_raises_the_error_of_a_failed_item():
    @anyray.remote
    def fail():
        raise ValueError("one of many")

    with pytest.raises(ValueError, match="one of many"):
        anyray.get([echo.remote(1), fail.remote(), echo.remote(2)])


def test_an_exception_with_its_own_constructor_signature():
    class HttpError(Exception):
        def __init__(self, status, reason):
            super().__init__(f"HTTP {status}: {reason}")
            self.status = status

    @anyray.remote
    def fetch():
        raise HttpError(404, "not found")

    with pytest.raises(exceptions.TaskError, match="HTTP 404: not found"):
        anyray.get(fetch.remote())
    assert_runtime_works()


def test_an_unpicklable_exception_still_reports_its_text():
    import threading

    class Unpicklable(Exception):
        def __init__(self, message):
            super().__init__(message)
            self.lock = threading.Lock()

    @anyray.remote
    def fail():
        raise Unpicklable("carries a lock")

    with pytest.raises(exceptions.TaskError, match="carries a lock"):
        anyray.get(fail.remote())
    assert_runtime_works()


def _flaky(times_to_fail, error):
    @anyray.remote
    def flaky(recorder):
        attempt = anyray.get(recorder.record.remote("attempt"))
        if attempt <= times_to_fail:
            raise error(f"attempt {attempt} failed")
        return attempt

    return flaky


def test_retry_exceptions_true_retries_a_failing_task():
    recorder = Recorder.remote()
    flaky = _flaky(2, ValueError).options(max_retries=2, retry_exceptions=True)
    assert anyray.get(flaky.remote(recorder)) == 3
    assert len(anyray.get(recorder.entries.remote())) == 3


def test_retry_exceptions_gives_up_after_max_retries():
    recorder = Recorder.remote()
    flaky = _flaky(5, ValueError).options(max_retries=1, retry_exceptions=True)
    with pytest.raises(ValueError, match="attempt 2 failed"):
        anyray.get(flaky.remote(recorder))
    assert len(anyray.get(recorder.entries.remote())) == 2


def test_retry_exceptions_list_retries_only_the_listed_classes():
    recorder = Recorder.remote()
    flaky = _flaky(2, ConnectionError).options(max_retries=3, retry_exceptions=[ConnectionError, TimeoutError])
    assert anyray.get(flaky.remote(recorder)) == 3

    other = Recorder.remote()
    unlisted = _flaky(2, KeyError).options(max_retries=3, retry_exceptions=[ConnectionError])
    with pytest.raises(KeyError, match="attempt 1 failed"):
        anyray.get(unlisted.remote(other))
    assert len(anyray.get(other.entries.remote())) == 1


def test_application_errors_are_not_retried_by_default():
    recorder = Recorder.remote()
    flaky = _flaky(1, ValueError).options(max_retries=3)
    with pytest.raises(ValueError, match="attempt 1 failed"):
        anyray.get(flaky.remote(recorder))
    assert len(anyray.get(recorder.entries.remote())) == 1


def test_retry_exceptions_in_the_decorator():
    recorder = Recorder.remote()

    @anyray.remote(max_retries=2, retry_exceptions=[RuntimeError])
    def flaky(recorder):
        attempt = anyray.get(recorder.record.remote("attempt"))
        if attempt < 3:
            raise RuntimeError("not yet")
        return "third time lucky"

    assert anyray.get(flaky.remote(recorder)) == "third time lucky"


@pytest.mark.requires("error_info")
def test_error_info_lists_failed_tasks():
    @anyray.remote
    def listed_failure():
        raise ValueError("listed-7741")

    with pytest.raises(ValueError):
        anyray.get(listed_failure.remote())
    entries = [e for e in anyray.error_info() if "listed_failure" in e["function"]]
    assert entries, anyray.error_info()
    entry = entries[-1]
    assert entry["error_type"] == "ValueError"
    assert "listed-7741" in entry["message"]
    assert set(entry) >= {"time", "task_id", "function", "error_type", "message"}


@pytest.mark.requires("error_info")
def test_error_info_omits_successful_tasks():
    @anyray.remote
    def fine_task_3391():
        return 1

    anyray.get(fine_task_3391.remote())
    assert not [e for e in anyray.error_info() if "fine_task_3391" in e["function"]]


@pytest.mark.requires("timeline")
def test_timeline_lists_the_tasks_that_ran(tmp_path):
    @anyray.remote
    def traced_task_5120():
        return 1

    anyray.get([traced_task_5120.remote() for _ in range(3)])
    events = [e for e in anyray.timeline() if "traced_task_5120" in e["name"]]
    assert len(events) == 3
    for event in events:
        assert event["ph"] == "X"
        assert event["dur"] >= 0
        assert {"ts", "pid", "tid"} <= set(event)
    path = tmp_path / "trace.json"
    assert anyray.timeline(filename=str(path)) is None
    written = json.loads(path.read_text())
    assert len([e for e in written if "traced_task_5120" in e["name"]]) == 3

"""Bad input: every misuse raises a clear error of the right type at the call site, and nothing breaks.

Each test asserts the error's type and a fragment of its message, then runs
a task to show the runtime still works.
"""

import threading

import pytest

import anyray
from anyray.conformance.helpers import Counter, Recorder, assert_runtime_works, echo, recorded
from anyray.exceptions import TaskError

pytestmark = pytest.mark.usefixtures("anyray_session")


@pytest.fixture
def add():
    @anyray.remote
    def add(a, b=1):
        return a + b

    return add


# -- calling remote things directly ------------------------------------------------


def test_calling_a_remote_function_directly(add):
    with pytest.raises(TypeError, match=r"Remote functions cannot be called directly.*'add\.remote\(\)'"):
        add(1)
    assert anyray.get(add.remote(1)) == 2


def test_calling_an_actor_class_directly():
    with pytest.raises(TypeError, match=r"Actors cannot be instantiated directly.*'Counter\.remote\(\)'"):
        Counter()
    assert anyray.get(Counter.remote(3).get.remote()) == 3


def test_calling_an_actor_method_directly():
    counter = Counter.remote()
    with pytest.raises(TypeError, match=r"Actor methods cannot be called directly.*'incr\.remote\(\)'"):
        counter.incr()
    assert anyray.get(counter.incr.remote()) == 1


def test_calling_an_unknown_actor_method():
    counter = Counter.remote()
    with pytest.raises(AttributeError, match=r"has no method 'incrr'"):
        counter.incrr.remote()
    assert anyray.get(counter.incr.remote()) == 1


# -- wrong arguments at .remote() ------------------------------------------------------


def test_too_few_arguments(add):
    with pytest.raises(TypeError, match=r"missing a required argument: 'a'"):
        add.remote()
    assert anyray.get(add.remote(2)) == 3


def test_too_many_arguments(add):
    with pytest.raises(TypeError, match=r"too many positional arguments"):
        add.remote(1, 2, 3)
    assert anyray.get(add.remote(1, 2)) == 3


def test_unknown_keyword_argument(add):
    with pytest.raises(TypeError, match=r"got an unexpected keyword argument 'c'"):
        add.remote(1, c=2)
    assert anyray.get(add.remote(1, b=5)) == 6


def test_wrong_arguments_to_an_actor_constructor():
    with pytest.raises(TypeError, match=r"too many positional arguments"):
        Counter.remote(1, 2)
    with pytest.raises(TypeError, match=r"got an unexpected keyword argument 'begin'"):
        Counter.remote(begin=1)
    assert anyray.get(Counter.remote(start=4).get.remote()) == 4


def test_wrong_arguments_to_an_actor_method():
    counter = Counter.remote()
    with pytest.raises(TypeError, match=r"too many positional arguments"):
        counter.incr.remote(1, 2)
    with pytest.raises(TypeError, match=r"got an unexpected keyword argument 'step'"):
        counter.incr.remote(step=2)
    assert anyray.get(counter.incr.remote(by=2)) == 2


# -- invalid options ----------------------------------------------------------------


def test_negative_num_cpus(add):
    with pytest.raises(ValueError, match=r"option 'num_cpus' must be >= 0"):
        add.options(num_cpus=-1)
    with pytest.raises(ValueError, match=r"option 'num_cpus' must be >= 0"):
        anyray.remote(num_cpus=-1)(lambda: None)
    assert anyray.get(add.options(num_cpus=1).remote(1)) == 2


def test_unknown_option_name(add):
    with pytest.raises(ValueError, match=r"unknown option 'num_cpu'.*Did you mean 'num_cpus'\?"):
        add.options(num_cpu=1)
    with pytest.raises(ValueError, match=r"unknown option 'colour'"):
        anyray.remote(colour="red")(lambda: None)
    assert anyray.get(add.remote(1)) == 2


def test_wrong_option_types(add):
    with pytest.raises(TypeError, match=r"option 'num_cpus' must be a number, got str"):
        add.options(num_cpus="two")
    with pytest.raises(TypeError, match=r"option 'max_retries' must be an int"):
        add.options(max_retries=1.5)
    with pytest.raises(TypeError, match=r"option 'resources' must be a dict"):
        add.options(resources=["Custom"])
    with pytest.raises(TypeError, match=r"option 'retry_exceptions' must be a bool or a list of exception classes"):
        add.options(retry_exceptions="yes")
    assert anyray.get(add.remote(1)) == 2


def test_cpu_in_custom_resources(add):
    with pytest.raises(ValueError, match=r"use num_cpus / num_gpus instead of 'CPU' in 'resources'"):
        add.options(resources={"CPU": 1})
    with pytest.raises(ValueError, match=r"use num_cpus / num_gpus instead of 'GPU' in 'resources'"):
        anyray.remote(resources={"GPU": 1})(lambda: None)
    assert anyray.get(add.options(resources={"Custom": 1}).remote(1)) == 2


def test_invalid_actor_options():
    with pytest.raises(ValueError, match=r"option 'max_concurrency' must be >= 1"):
        Counter.options(max_concurrency=0)
    with pytest.raises(ValueError, match=r"unknown option 'max_retries'"):
        Counter.options(max_retries=1)
    with pytest.raises(ValueError, match=r"option 'lifetime' must be None, 'detached' or 'non_detached'"):
        Counter.options(lifetime="forever")
    with pytest.raises(TypeError, match=r"option 'name' must be a string or None"):
        Counter.options(name=42)
    assert anyray.get(Counter.options(max_concurrency=2).remote(1).get.remote()) == 1


def test_invalid_method_options():
    with pytest.raises(ValueError, match=r"unknown option 'num_cpus'"):
        anyray.method(num_cpus=1)
    counter = Counter.remote()
    with pytest.raises(TypeError, match=r"option 'num_returns' must be an int"):
        counter.pair.options(num_returns=1.5)
    assert anyray.get(counter.pair.remote()) == (0, 0)


def test_num_returns_zero_runs_the_task_and_returns_none():
    recorder = Recorder.remote()

    @anyray.remote(num_returns=0)
    def side_effect(recorder):
        anyray.get(recorder.record.remote("ran"))

    assert side_effect.remote(recorder) is None  # as in Ray: no ref to wait on
    recorded(recorder, "ran")
    counter = Counter.remote()
    assert counter.incr.options(num_returns=0).remote(5) is None
    assert anyray.get(counter.get.remote()) == 5


@pytest.mark.parametrize("value", [-1, -3])
def test_negative_num_returns(add, value):
    with pytest.raises(ValueError, match=rf"option 'num_returns' must be >= 0, got {value}"):
        add.options(num_returns=value)
    with pytest.raises(ValueError, match=r"option 'num_returns' must be >= 0"):
        anyray.remote(num_returns=value)(lambda: None)
    with pytest.raises(ValueError, match=r"option 'num_returns' must be >= 0"):
        Counter.remote().pair.options(num_returns=value)
    assert anyray.get(add.remote(1)) == 2


def test_negative_num_gpus(add):
    with pytest.raises(ValueError, match=r"option 'num_gpus' must be >= 0, got -1"):
        add.options(num_gpus=-1)
    with pytest.raises(ValueError, match=r"option 'num_gpus' must be >= 0, got -0.5"):
        Counter.options(num_gpus=-0.5)
    assert anyray.get(add.remote(1)) == 2


@pytest.mark.parametrize("amount", ["two", None, [1], True])
def test_a_resource_amount_that_is_not_a_number(add, amount):
    with pytest.raises(TypeError, match=r"option \"resources\['Custom'\]\" must be a number, got"):
        add.options(resources={"Custom": amount})
    with pytest.raises(TypeError, match=r"option \"resources\['Custom'\]\" must be a number, got"):
        Counter.options(resources={"Custom": amount})
    with pytest.raises(ValueError, match=r"option \"resources\['Custom'\]\" must be >= 0"):
        add.options(resources={"Custom": -1})
    assert anyray.get(add.options(resources={"Custom": 1}).remote(1)) == 2


def test_max_concurrency_that_is_not_an_int():
    with pytest.raises(TypeError, match=r"option 'max_concurrency' must be an int, got float 1.5"):
        Counter.options(max_concurrency=1.5)

    class Plain:
        pass

    with pytest.raises(TypeError, match=r"option 'max_concurrency' must be an int"):
        anyray.remote(max_concurrency="4")(Plain)
    assert anyray.get(Counter.options(max_concurrency=2).remote(1).get.remote()) == 1


@pytest.mark.parametrize("value", [-2, -10])
def test_max_restarts_below_minus_one(value):
    with pytest.raises(ValueError, match=rf"option 'max_restarts' must be >= -1 \(-1 means unlimited\), got {value}"):
        Counter.options(max_restarts=value)
    with pytest.raises(ValueError, match=r"option 'max_task_retries' must be >= -1"):
        Counter.options(max_task_retries=value)
    assert anyray.get(Counter.options(max_restarts=-1).remote(2).get.remote()) == 2


@pytest.mark.parametrize("target", [42, "f", None, [len]])
def test_remote_of_something_that_is_not_a_function_or_class(target):
    with pytest.raises(TypeError, match=r"@remote takes either one function or class, or keyword options only"):
        anyray.remote(target)
    assert_runtime_works()


def test_options_ray_accepts_that_change_nothing_here(add):
    accepted = add.options(enable_task_events=False, _metadata={"owner": "tests"}, label_selector={})
    assert anyray.get(accepted.remote(1)) == 2
    counter = Counter.options(enable_task_events=False, _metadata={"owner": "tests"}, label_selector={}).remote(3)
    assert anyray.get(counter.get.options(enable_task_events=False).remote()) == 3

    @anyray.remote(enable_task_events=False, label_selector={"zone": "any"})
    def decorated():
        return "ran"

    assert anyray.get(decorated.remote()) == "ran"


def test_those_options_of_the_wrong_type(add):
    with pytest.raises(TypeError, match=r"option 'enable_task_events' must be True or False, got 'no'"):
        add.options(enable_task_events="no")
    with pytest.raises(TypeError, match=r"option 'label_selector' must be a dict of label name to value"):
        add.options(label_selector={"zone": 1})
    with pytest.raises(TypeError, match=r"option 'accelerator_type' must be a string or None, got int"):
        Counter.options(accelerator_type=100)
    with pytest.raises(TypeError, match=r"option '_metadata' must be a dict or None, got str"):
        add.options(_metadata="x")
    assert anyray.get(add.remote(1)) == 2


def test_num_returns_that_the_result_does_not_match(add):
    @anyray.remote(num_returns=2)
    def three():
        return 1, 2, 3

    first, second = three.remote()
    with pytest.raises(TaskError, match=r"declares num_returns=2 but returned 3 values"):
        anyray.get(first)
    assert_runtime_works()


# -- get, wait, put, cancel, kill on the wrong things -------------------------------------


@pytest.mark.parametrize("value", [1, "ref", None])
def test_get_of_a_non_ref(value):
    with pytest.raises(TypeError, match=r"get\(\) expects an ObjectRef or a list of ObjectRefs"):
        anyray.get(value)
    assert_runtime_works()


def test_get_of_a_list_holding_a_non_ref():
    with pytest.raises(TypeError, match=r"get\(\) expects ObjectRefs, but item 1 is a int"):
        anyray.get([anyray.put(0), 1])
    assert_runtime_works()


def test_wait_on_non_refs():
    with pytest.raises(TypeError, match=r"wait\(\) expects ObjectRefs, but item 0 is a str"):
        anyray.wait(["not a ref"])
    with pytest.raises(TypeError, match=r"wait\(\) expects a list of ObjectRefs, got a single ObjectRef"):
        anyray.wait(anyray.put(1))
    assert_runtime_works()


def test_wait_with_duplicate_refs():
    ref = anyray.put(1)
    with pytest.raises(ValueError, match=r"wait\(\) got the same ObjectRef more than once"):
        anyray.wait([ref, ref])
    assert anyray.wait([ref]) == ([ref], [])


def test_wait_num_returns_larger_than_the_refs():
    refs = [anyray.put(1), anyray.put(2)]
    with pytest.raises(ValueError, match=r"num_returns=3 is more than the 2 refs given"):
        anyray.wait(refs, num_returns=3)
    with pytest.raises(ValueError, match=r"num_returns must be a positive int"):
        anyray.wait(refs, num_returns=0)
    assert len(anyray.wait(refs, num_returns=2)[0]) == 2


def test_put_of_an_object_ref():
    ref = anyray.put(1)
    with pytest.raises(TypeError, match=r"put\(\) of an ObjectRef is not allowed"):
        anyray.put(ref)
    assert anyray.get(anyray.get(anyray.put([ref]))[0]) == 1


@pytest.mark.parametrize("timeout", [-1, -0.5])
def test_negative_timeout(timeout):
    ref = anyray.put(1)
    with pytest.raises(ValueError, match=r"get\(\): timeout must be >= 0 seconds or None"):
        anyray.get(ref, timeout=timeout)
    with pytest.raises(ValueError, match=r"wait\(\): timeout must be >= 0 seconds or None"):
        anyray.wait([ref], timeout=timeout)
    assert anyray.get(ref, timeout=1.5) == 1


def test_timeout_of_the_wrong_type():
    ref = anyray.put(1)
    with pytest.raises(TypeError, match=r"timeout must be a number of seconds or None"):
        anyray.get(ref, timeout="1")
    assert anyray.get(ref, timeout=1) == 1


def test_cancel_of_a_non_ref():
    with pytest.raises(TypeError, match=r"cancel\(\) expects an ObjectRef"):
        anyray.cancel("task")
    assert_runtime_works()


def test_kill_of_a_non_actor():
    with pytest.raises(TypeError, match=r"kill\(\) expects an ActorHandle, got ObjectRef"):
        anyray.kill(anyray.put(1))
    assert_runtime_works()


# -- values that cannot be serialized -----------------------------------------------------


def test_unpicklable_argument_names_its_type(add):
    lock = threading.Lock()
    type_name = type(lock).__name__
    with pytest.raises(TypeError, match=rf"Could not serialize argument 0 of .*add of type {type_name}"):
        add.remote(lock)
    with pytest.raises(TypeError, match=rf"Could not serialize argument 'b' of .*add of type {type_name}"):
        add.remote(1, b=lock)
    assert anyray.get(add.remote(1)) == 2


def test_unpicklable_argument_to_an_actor():
    counter = Counter.remote()
    with pytest.raises(TypeError, match=r"Could not serialize argument 0 of Counter\.append of type lock"):
        counter.append.remote(threading.Lock())
    with pytest.raises(TypeError, match=r"Could not serialize argument 0 of Counter\.__init__ of type lock"):
        Counter.remote(threading.Lock())
    assert anyray.get(counter.append.remote("fine")) == 1


def test_unpicklable_return_value_fails_at_get():
    @anyray.remote
    def make_lock():
        return threading.Lock()

    ref = make_lock.remote()
    with pytest.raises(TaskError, match=r"return value of .*make_lock of type lock") as info:
        anyray.get(ref)
    assert isinstance(info.value, TypeError)
    assert_runtime_works()


def test_unpicklable_put():
    with pytest.raises(TypeError, match=r"Could not serialize the value passed to put\(\) of type lock"):
        anyray.put(threading.Lock())
    assert_runtime_works()


# -- named actors and init ----------------------------------------------------------------


def test_get_actor_of_an_unknown_name():
    with pytest.raises(ValueError, match=r"Failed to look up actor with name 'no-such-actor-b7f2'"):
        anyray.get_actor("no-such-actor-b7f2")
    with pytest.raises(ValueError, match=r"Failed to look up actor with name 'no-such-actor-b7f2' in namespace 'x"):
        anyray.get_actor("no-such-actor-b7f2", namespace="x-namespace")
    assert_runtime_works()


def test_get_actor_with_an_empty_name():
    with pytest.raises(TypeError, match=r"get_actor\(\) expects an actor name"):
        anyray.get_actor("")
    assert_runtime_works()


def test_a_second_init(init_kwargs):
    with pytest.raises(RuntimeError, match=r"anyray\.init\(\) was called twice"):
        anyray.init(**init_kwargs)
    assert anyray.is_initialized()
    assert anyray.get(echo.remote("same runtime")) == "same runtime"

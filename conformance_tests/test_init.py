"""Starting and stopping: init, shutdown, is_initialized, reinit rules, spellings, discovery, auto-init.

Each test starts from no runtime (``isolated_runtime``) and leaves none behind.
"""

import pytest

import anyray
from anyray.conformance.helpers import assert_runtime_works, echo
from anyray.exceptions import BackendNotFoundError

pytestmark = pytest.mark.usefixtures("isolated_runtime")


def test_init_then_shutdown_toggles_is_initialized(init_kwargs, backend_name):
    assert not anyray.is_initialized()
    context = anyray.init(**init_kwargs)
    assert anyray.is_initialized()
    assert context.backend == backend_name
    assert anyray.get(echo.remote(16)) == 16
    anyray.shutdown()
    assert not anyray.is_initialized()


def test_shutdown_without_init_is_harmless():
    anyray.shutdown()
    anyray.shutdown()
    assert not anyray.is_initialized()


def test_init_after_shutdown_starts_afresh(init_kwargs):
    anyray.init(**init_kwargs)
    ref = anyray.put("first run")
    assert anyray.get(ref) == "first run"
    anyray.shutdown()
    anyray.init(**init_kwargs)
    assert anyray.get(echo.remote(9)) == 9


def test_second_init_raises_runtime_error(init_kwargs):
    anyray.init(**init_kwargs)
    with pytest.raises(RuntimeError, match="ignore_reinit_error=True"):
        anyray.init(**init_kwargs)
    assert anyray.is_initialized()
    assert_runtime_works()


def test_ignore_reinit_error_keeps_the_running_backend(init_kwargs, backend_name):
    anyray.init(**init_kwargs)
    ref = anyray.put("kept")
    context = anyray.init(**init_kwargs, ignore_reinit_error=True)
    assert context.backend == backend_name
    assert anyray.get(ref) == "kept"


def test_init_context_manager_shuts_down_on_exit(init_kwargs, backend_name):
    with anyray.init(**init_kwargs) as context:
        assert context.backend == backend_name
        assert anyray.get(echo.remote(25)) == 25
    assert not anyray.is_initialized()


def test_init_context_manager_shuts_down_when_the_body_raises(init_kwargs):
    with pytest.raises(KeyError):
        with anyray.init(**init_kwargs):
            raise KeyError("body failed")
    assert not anyray.is_initialized()


def test_init_returns_the_address_and_node_id(init_kwargs):
    context = anyray.init(**init_kwargs)
    assert hasattr(context, "address")
    assert hasattr(context, "dashboard_url")
    node_ids = {node["NodeID"] for node in anyray.nodes()}
    assert context.node_id is None or context.node_id in node_ids


def test_local_mode_means_the_local_backend():
    context = anyray.init(local_mode=True, num_cpus=1)
    assert context.backend == "local"
    assert anyray.get(echo.remote(36)) == 36


def test_local_mode_conflicts_with_another_backend():
    with pytest.raises(ValueError, match="local_mode=True means backend='local'"):
        anyray.init(backend="some-other-backend", local_mode=True)
    assert not anyray.is_initialized()


def test_unknown_backend_names_the_installed_ones(backend_name):
    with pytest.raises(BackendNotFoundError, match=r"No anyray backend named 'no-such-backend'") as info:
        anyray.init(backend="no-such-backend")
    assert "Installed backends:" in str(info.value)
    assert "local" in str(info.value)
    assert backend_name in str(info.value)
    assert isinstance(info.value, LookupError)
    assert not anyray.is_initialized()


def test_backend_must_be_a_name():
    with pytest.raises(TypeError, match="backend must be a backend name"):
        anyray.init(42)
    assert not anyray.is_initialized()


def test_first_remote_call_starts_the_default_backend(monkeypatch, backend_name, init_kwargs):
    monkeypatch.setenv("ANYRAY_BACKEND", backend_name)
    if "address" in init_kwargs:
        monkeypatch.setenv("ANYRAY_ADDRESS", str(init_kwargs["address"]))
    assert not anyray.is_initialized()
    ref = echo.remote(49)
    assert anyray.is_initialized()
    assert anyray.get(ref) == 49


def test_first_put_starts_the_default_backend(monkeypatch, backend_name, init_kwargs):
    monkeypatch.setenv("ANYRAY_BACKEND", backend_name)
    if "address" in init_kwargs:
        monkeypatch.setenv("ANYRAY_ADDRESS", str(init_kwargs["address"]))
    assert anyray.get(anyray.put([1, 2])) == [1, 2]
    assert anyray.is_initialized()


def test_init_resources_are_visible(init_kwargs):
    kwargs = {**init_kwargs, "num_cpus": 3, "resources": {"Widget": 5}}
    if "address" in init_kwargs:  # joining a running cluster, whose nodes' resources are fixed: an error, as in Ray
        with pytest.raises(ValueError, match=r"When connecting to an existing cluster, num_cpus and resources must"):
            anyray.init(**kwargs)
        assert not anyray.is_initialized()
        return
    anyray.init(**kwargs)
    total = anyray.cluster_resources()
    assert total["CPU"] == 3
    assert total["Widget"] == 5


@pytest.mark.parametrize("value", [-1, -0.5])
def test_init_rejects_a_negative_cpu_count(init_kwargs, value):
    with pytest.raises(ValueError, match=r"num_cpus must be a number >= 0"):
        anyray.init(**{**init_kwargs, "num_cpus": value})
    assert not anyray.is_initialized()


def test_init_rejects_cpu_in_custom_resources(init_kwargs):
    with pytest.raises(ValueError, match=r"use num_cpus / num_gpus instead of 'CPU' / 'GPU'"):
        anyray.init(**{**init_kwargs, "resources": {"CPU": 2}})
    assert not anyray.is_initialized()


def test_init_rejects_an_unknown_keyword(init_kwargs):
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) 'no_such_option'"):
        anyray.init(**init_kwargs, no_such_option=1)
    assert not anyray.is_initialized()


def test_a_first_argument_naming_the_backend_is_the_backend(init_kwargs, backend_name):
    kwargs = {k: v for k, v in init_kwargs.items() if k != "backend"}
    context = anyray.init(backend_name, **kwargs)
    assert context.backend == backend_name
    assert anyray.get(echo.remote(64)) == 64


_OTHER_BACKENDS_OPTIONS = ("token_file", "metadata", "security", "num_workers")


def test_a_backend_option_given_to_another_backend_is_a_type_error(init_kwargs, backend_name, backend_class):
    option = next(o for o in _OTHER_BACKENDS_OPTIONS if o not in backend_class.accepted_options)
    with pytest.raises(TypeError, match=rf"unexpected keyword argument\(s\) '{option}' for the '{backend_name}' "
                                        rf"backend; it accepts: ") as info:
        anyray.init(**init_kwargs, **{option: "value"})
    if option == "token_file":  # says whose option it is
        assert "'token_file' is an option of the 'cluster' backend" in str(info.value)
    assert not anyray.is_initialized()


def test_a_redis_password_without_an_address_is_a_clear_error(init_kwargs, monkeypatch):
    for variable in ("ANYRAY_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)
    kwargs = {k: v for k, v in init_kwargs.items() if k != "address"}
    with pytest.raises(ValueError, match=r"_redis_password= is the password of a running cluster's Redis; pass the "
                                         r"cluster's address too") as info:
        anyray.init(**kwargs, _redis_password="p4ssw0rd-of-nothing")
    assert "p4ssw0rd-of-nothing" not in str(info.value)
    assert not anyray.is_initialized()


@pytest.mark.parametrize("given", ["address=", "redis_address=", "$ANYRAY_ADDRESS", "$RAY_ADDRESS"])
def test_an_address_on_a_single_machine_backend_is_a_clear_error(init_kwargs, backend_name, backend_class,
                                                                  monkeypatch, given):
    if "multi_node" in backend_class.capabilities:
        pytest.skip(f"the {backend_name} backend connects to clusters (multi_node): an address is its to use")
    for variable in ("ANYRAY_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)
    kwargs = dict(init_kwargs)
    address = "redis://:p4ssw0rd@10.0.0.1:6379"
    if given.startswith("$"):
        monkeypatch.setenv(given[1:], address)
        remedy = f"unset {given[1:]}"
    else:
        kwargs[given[:-1]] = address
        remedy = "drop address="
    with pytest.raises(ValueError, match=rf"The '{backend_name}' backend runs on this machine only and connects to "
                                         rf"no cluster") as info:
        anyray.init(**kwargs)
    message = str(info.value)
    assert given.replace("redis_address=", "address=") in message and remedy in message
    assert "backend='cluster'" in message
    assert "p4ssw0rd" not in message and "redis://***@10.0.0.1:6379" in message
    assert not anyray.is_initialized()

"""pytest plugin of the conformance suite: picks the backend under test and applies its declarations.

Loaded in every pytest run through the ``pytest11`` entry point, so a
plugin's own test run can execute the suite against its backend::

    pytest --pyargs anyray.conformance --backend NAME [--backend-option KEY=VALUE ...]

- ``--backend`` (default ``$ANYRAY_TEST_BACKEND``, else ``local``) names the
  backend; ``--backend-option KEY=VALUE`` (repeatable, VALUE parsed as JSON
  where it can be) is passed to ``anyray.init``. ``num_cpus=null`` drops a
  session default (for a backend that connects to an existing cluster).
- ``@pytest.mark.requires(*capabilities)`` skips a test the backend's class
  does not declare every capability for, saying which one is missing.
- The backend class's ``known_gaps`` (test function name, or
  ``module::name``, to a ``Gap`` or its reason) turns those tests into
  strict expected failures, so a gap that closes fails loudly; a gap whose
  name matches no test of the suite stops the run (checked whenever every
  test module is collected, before ``-k`` deselects), so none goes stale. A
  gap's ``timeout`` bounds a test that fails by hanging.
- Fixtures: ``anyray_session`` (the runtime most tests share, started once),
  ``isolated_runtime`` (no runtime before the test, none after it) and
  ``init_kwargs`` (what to pass ``anyray.init`` to start the backend under
  test). Tests using ``isolated_runtime`` run first, so the shared runtime
  starts once per session, which matters for backends that take seconds to
  start.
- At the end, one line per backend: passed, skipped by capability, xfailed, failed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SUITE_DIR = Path(__file__).resolve().parent
DEFAULT_BACKEND = "multiprocess"
SESSION_NUM_CPUS = 4
SESSION_RESOURCES = {"Custom": 2}
DEFAULT_TEST_TIMEOUT = 120
_SKIP_PHRASE = "does not declare capability"


def pytest_addoption(parser):
    group = parser.getgroup("anyray", "anyray conformance suite")
    group.addoption("--backend", dest="anyray_backend", metavar="NAME",
                    default=os.environ.get("ANYRAY_TEST_BACKEND") or DEFAULT_BACKEND,
                    help="anyray backend the conformance suite runs against "
                         "(default: $ANYRAY_TEST_BACKEND, else 'multiprocess', the default backend).")
    group.addoption("--backend-option", dest="anyray_backend_options", metavar="KEY=VALUE",
                    action="append", default=[],
                    help="keyword passed to anyray.init for the backend under test; VALUE is parsed as JSON "
                         "when it can be. Repeatable.")


def parse_backend_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise pytest.UsageError(f"--backend-option expects KEY=VALUE, got {pair!r}.")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        options[key.strip()] = value
    return options


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "requires(*capabilities): skip unless the backend under test declares every capability.")
    state = _SuiteState(config.getoption("anyray_backend"),
                        parse_backend_options(config.getoption("anyray_backend_options")))
    config.stash[_STATE] = state
    config.pluginmanager.register(_Summary(state), "anyray-conformance-summary")


class _SuiteState:
    """The backend under test (its class loaded on first need) and its options."""

    def __init__(self, backend: str, options: dict):
        self.backend = backend
        self.options = options
        self._backend_cls = None
        self.test_ids: set[str] = set()  # node ids of the conformance tests collected
        self.shared: SharedRuntime | None = None

    @property
    def backend_cls(self):
        if self._backend_cls is None:
            from anyray.exceptions import BackendNotFoundError
            from anyray.plugins import load_backend

            try:
                self._backend_cls = load_backend(self.backend)
            except BackendNotFoundError as exc:
                raise pytest.UsageError(f"--backend {self.backend}: {exc}") from exc
        return self._backend_cls

    def init_kwargs(self) -> dict:
        kwargs = {"backend": self.backend, "num_cpus": SESSION_NUM_CPUS, "resources": dict(SESSION_RESOURCES)}
        kwargs.update(self.options)
        return {k: v for k, v in kwargs.items() if v is not None}


_STATE = pytest.StashKey[_SuiteState]()


def is_conformance_item(item) -> bool:
    return Path(str(item.path)).resolve().is_relative_to(SUITE_DIR)


def _known_capabilities() -> set[str]:
    from anyray.ports.backend import Capability

    return {v for k, v in vars(Capability).items() if k.isupper() and isinstance(v, str)}


def _gap_keys(item) -> list[str]:
    stem = Path(str(item.path)).stem
    names = [item.name, getattr(item, "originalname", item.name)]
    return [key for name in dict.fromkeys(names) for key in (name, f"{stem}::{name}", f"{stem}.py::{name}")]


def _whole_suite_collected(config, conformance) -> bool:
    """True when every test module of the suite was collected whole (``-k`` and ``-m`` deselect later)."""
    if any("::" in str(arg) for arg in config.args):
        return False
    modules = {Path(str(item.path)).resolve() for item in conformance}
    return modules >= set(SUITE_DIR.glob("test_*.py"))


def _check_gaps(state, config, conformance) -> dict:
    """The backend's gaps, each checked: a key matching no test of the suite is a usage error."""
    from anyray.ports.backend import Gap

    try:
        gaps = {key: Gap.of(value) for key, value in dict(state.backend_cls.known_gaps).items()}
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(f"backend {state.backend!r}: known_gaps: {exc}") from exc
    if gaps and _whole_suite_collected(config, conformance):
        matched = {key for item in conformance for key in _gap_keys(item)}
        stale = sorted(set(gaps) - matched)
        if stale:
            raise pytest.UsageError(
                f"backend {state.backend!r} declares known gaps that name no test of the conformance suite: "
                f"{', '.join(stale)}. The test was renamed or removed: rename the gap or drop it.")
    return gaps


# tryfirst: this sees every collected test before -k / -m deselect some, so stale gaps are found on any run.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    state = config.stash[_STATE]
    conformance = [item for item in items if is_conformance_item(item)]
    state.test_ids = {item.nodeid for item in conformance}
    marked = [item for item in items if item.get_closest_marker("requires") is not None]
    if not conformance and not marked:
        return
    backend_cls = state.backend_cls
    known = _known_capabilities()
    declared = set(backend_cls.capabilities)
    for item in marked:
        for marker in item.iter_markers("requires"):
            for capability in marker.args:
                if capability not in known:
                    raise pytest.UsageError(f"{item.nodeid}: requires({capability!r}) names no capability; "
                                            f"known: {', '.join(sorted(known))}.")
                if capability not in declared:
                    item.add_marker(pytest.mark.skip(
                        reason=f"backend {state.backend!r} {_SKIP_PHRASE} {capability!r}"))
    gaps = _check_gaps(state, config, conformance)
    timeouts = config.pluginmanager.hasplugin("timeout")
    timeout_set = bool(config.getoption("timeout", None) or _ini(config, "timeout"))
    for item in conformance:
        gap = next((gaps[key] for key in _gap_keys(item) if key in gaps), None)
        if gap is not None:
            item.add_marker(pytest.mark.xfail(strict=not gap.by_chance, reason=f"known gap of {state.backend!r} "
                                                                                f"({gap.describe()})"))
            if gap.timeout is not None and timeouts:
                item.add_marker(pytest.mark.timeout(gap.timeout))
        if not timeout_set and item.get_closest_marker("timeout") is None and timeouts:
            item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT))
    # Tests that start their own runtime go first: the shared one then starts once.
    items.sort(key=lambda item: 0 if "isolated_runtime" in getattr(item, "fixturenames", ()) else 1)


def _ini(config, name):
    try:
        return config.getini(name)
    except ValueError:
        return None


def pytest_report_header(config):
    state = config.stash[_STATE]
    return f"anyray conformance backend: {state.backend!r}" + (f" options {state.options}" if state.options else "")


# -- fixtures -------------------------------------------------------------------


class SharedRuntime:
    """The runtime most conformance tests share: started on first use, stopped for isolated tests."""

    def __init__(self, kwargs: dict):
        self.kwargs = kwargs
        self.context = None

    def ensure(self):
        import anyray

        if self.context is None or not anyray.is_initialized():
            self.stop()
            self.context = anyray.init(**self.kwargs)
        return self.context

    def stop(self) -> None:
        import anyray

        if anyray.is_initialized():
            anyray.shutdown()
        self.context = None


@pytest.fixture(scope="session")
def backend_name(pytestconfig) -> str:
    """The name of the backend under test."""
    return pytestconfig.stash[_STATE].backend


@pytest.fixture(scope="session")
def backend_class(pytestconfig):
    """The Backend class registered under ``backend_name``."""
    return pytestconfig.stash[_STATE].backend_cls


@pytest.fixture(scope="session")
def init_kwargs(pytestconfig) -> dict:
    """Keywords that start the backend under test: the session defaults plus ``--backend-option``."""
    return pytestconfig.stash[_STATE].init_kwargs()


@pytest.fixture(scope="session")
def _shared_runtime(pytestconfig):
    state = pytestconfig.stash[_STATE]
    if state.shared is None:
        state.shared = SharedRuntime(state.init_kwargs())
    yield state.shared
    state.shared.stop()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """Stop the shared runtime once the conformance tests are done, before other tests run."""
    state = item.config.stash[_STATE]
    if state.shared is not None and item.nodeid in state.test_ids \
            and (nextitem is None or nextitem.nodeid not in state.test_ids):
        state.shared.stop()


@pytest.fixture
def anyray_session(_shared_runtime):
    """The shared runtime (``num_cpus=4``, ``resources={"Custom": 2}``); what ``init`` returned."""
    return _shared_runtime.ensure()


@pytest.fixture
def isolated_runtime(_shared_runtime, init_kwargs):
    """No runtime is running when the test starts, and none is left when it ends."""
    import anyray

    _shared_runtime.stop()
    yield init_kwargs
    if anyray.is_initialized():
        anyray.shutdown()


@pytest.fixture
def signal(anyray_session):
    """A Signal actor that is sent when the test ends, so no task stays blocked on it."""
    from anyray.conformance.helpers import Signal

    sig = Signal.remote()
    yield sig
    sig.send.remote()


# -- summary --------------------------------------------------------------------

_RANK = {"passed": 0, "skipped": 1, "capability": 1, "xfailed": 1, "failed": 2}


class _Summary:
    """Counts the outcome of each conformance test and prints one line at the end."""

    def __init__(self, state: _SuiteState):
        self.state = state
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report):
        if report.nodeid not in self.state.test_ids:
            return
        if report.failed:
            outcome = "failed"
        elif report.skipped and hasattr(report, "wasxfail"):
            outcome = "xfailed"
        elif report.skipped:
            message = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            outcome = "capability" if _SKIP_PHRASE in message else "skipped"
        elif report.when == "call":
            outcome = "passed"
        else:
            return
        previous = self.outcomes.get(report.nodeid)
        if previous is None or _RANK[outcome] > _RANK[previous]:
            self.outcomes[report.nodeid] = outcome

    def pytest_terminal_summary(self, terminalreporter):
        if not self.outcomes:
            return
        counts = dict.fromkeys(("passed", "capability", "xfailed", "failed", "skipped"), 0)
        for outcome in self.outcomes.values():
            counts[outcome] += 1
        line = (f"anyray conformance [{self.state.backend}]: {counts['passed']} passed, "
                f"{counts['capability']} skipped by capability, {counts['xfailed']} xfailed, "
                f"{counts['failed']} failed")
        if counts["skipped"]:
            line += f", {counts['skipped']} skipped otherwise"
        terminalreporter.write_line(line)

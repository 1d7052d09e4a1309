"""Diagnostics go through the ``anyray`` logger: to stderr as ``(anyray) ...`` until the program configures
logging, then to the program's own handlers only; never to stdout."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

from anyray.adapters.cluster.view import ClusterView
from anyray.adapters.metadata.memory import MemoryMetadataStore
from anyray.backend_kit.threads import DaemonThreadPool


def test_a_record_no_node_signed_is_a_logged_warning_not_stdout(caplog, capsys):
    view = ClusterView(MemoryMetadataStore(), "node-a", b"token-a", on_change=lambda: None, on_dead=lambda _: None)
    forged = ClusterView(MemoryMetadataStore(), "node-b", b"token-b", on_change=lambda: None,
                         on_dead=lambda _: None).seal_record({"actor": "x"})
    with caplog.at_level(logging.WARNING, logger="anyray"):
        assert view.open_record(forged) is None
    assert [r.name for r in caplog.records] == ["anyray.adapters.cluster.view"]
    assert "no node of this cluster signed" in caplog.records[0].getMessage()
    assert capsys.readouterr().out == ""


def test_a_failing_call_on_a_pool_thread_is_logged_with_its_traceback(caplog):
    pool = DaemonThreadPool("test-logging", 1)
    done = threading.Event()

    def boom():
        raise RuntimeError("marker-5521")

    with caplog.at_level(logging.ERROR, logger="anyray"):
        pool.submit(boom)
        pool.submit(done.set)
        assert done.wait(30)
    record = next(r for r in caplog.records if r.name == "anyray.backend_kit.threads")
    assert record.exc_info is not None and "marker-5521" in str(record.exc_info[1])
    pool.shutdown()


_SCRIPT = """
import logging, sys
import anyray
log = logging.getLogger("anyray.adapters.node.scheduler")
log.warning("first %s", "marker")
log.info("not shown by default")
if sys.argv[1] == "configured":
    logging.basicConfig(stream=sys.stdout, format="ROOT %(name)s %(message)s")
    log.warning("second")
"""


def _run(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, timeout=120)


def test_without_logging_configured_warnings_reach_stderr_marked():
    result = _run("plain")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["(anyray) first marker"]
    assert result.stdout == ""


def test_once_logging_is_configured_the_programs_handlers_alone_get_the_records():
    result = _run("configured")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["(anyray) first marker"]  # before basicConfig
    assert result.stdout.splitlines() == ["ROOT anyray.adapters.node.scheduler second"]

"""The private Dask cluster ``init(backend="dask")`` starts when no ``address`` is given.

The scheduler runs in the driver (a ``LocalCluster`` without workers); each
worker is a ``dask worker`` process with a nanny, started from the command
line rather than by ``LocalCluster``. Dask's own local workers are spawned
by multiprocessing, which imports the driver's ``__main__`` again in the
worker: a Ray script that calls ``init()`` at module level, without an
``if __name__ == "__main__":`` guard, would start a cluster inside its own
workers. ``dask worker`` processes import only Dask; they see the driver's
``sys.path``, so functions of the driver's own modules load there, and they
exit on their own (``--death-timeout``) when the driver dies.

Everything listens on 127.0.0.1 and speaks mutual TLS with a certificate
made for this cluster alone (:func:`make_security`): another user of the
machine can neither connect nor submit work, which a plain Dask cluster on
loopback would let them do.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

DEATH_TIMEOUT = 20   # seconds a worker outlives an unreachable scheduler
START_TIMEOUT = 60
DIR_PREFIX = "anyray-dask-"
STOP_GRACE = 3.0     # seconds workers get to finish what they run when the driver stops


class PrivateCluster:
    security = None  # the distributed.Security a client of this cluster needs

    def __init__(self, nthreads: list[int], resources: list[dict[str, float]]):
        self._nthreads = nthreads
        self._resources = resources
        self._cluster = None
        self._procs: list[subprocess.Popen] = []
        self._dir = None
        self.address = None

    def start(self) -> str:
        import dask
        from distributed import LocalCluster

        sweep_stale_dirs()
        self._dir = tempfile.mkdtemp(prefix=DIR_PREFIX)  # 0700
        with open(os.path.join(self._dir, "driver.pid"), "w") as f:
            f.write(str(os.getpid()))
        self.security, tls_files = make_security(self._dir)

        # A worker is sent no more tasks than it has threads: Dask's default (1.1) sends one more,
        # which then waits there while another worker has a free thread.
        # No HTTP routes: the scheduler's HTTP server is plain HTTP, which any local user could read.
        with dask.config.set({"distributed.scheduler.worker-saturation": 1.0,
                              "distributed.scheduler.http.routes": []}):
            # No dashboard; the scheduler's HTTP endpoints (health, metrics) on a free port of loopback.
            self._cluster = LocalCluster(n_workers=0, host="127.0.0.1", scheduler_port=0, dashboard_address=None,
                                         processes=True, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                         security=self.security, protocol="tls://")
        self.address = self._cluster.scheduler_address
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
                   DASK_LOGGING__DISTRIBUTED="warning")
        for i, (n, resources) in enumerate(zip(self._nthreads, self._resources)):
            cmd = [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nthreads", str(n),
                   "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1", "--name", f"anyray-{i}",
                   "--death-timeout", str(DEATH_TIMEOUT), "--local-directory", self._dir,
                   "--tls-ca-file", tls_files["ca"], "--tls-cert", tls_files["cert"], "--tls-key", tls_files["key"]]
            if resources:
                cmd += ["--resources", " ".join(f"{k}={v:g}" for k, v in resources.items())]
            self._procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True))
        return self.address

    def wait_for_workers(self, client) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while len(client.scheduler_info(n_workers=-1)["workers"]) < len(self._procs):
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"Could not start the dask backend: a Dask worker exited with code "
                                       f"{proc.returncode} before joining (its error is above).")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Could not start the dask backend: its workers did not join within "
                                   f"{START_TIMEOUT} s.")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the workers (SIGTERM: each nanny closes its worker; SIGKILL to the process group of those
        still busy after ``STOP_GRACE``), then the scheduler."""
        # The scheduler would warn that the leaving workers lose computed data: nobody needs it now.
        scheduler_log = logging.getLogger("distributed.scheduler")
        level = scheduler_log.level
        scheduler_log.setLevel(logging.ERROR)
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for proc in self._procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the nanny's worker process too
            except ProcessLookupError:
                pass
            proc.wait()
        self._procs = []
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
        scheduler_log.setLevel(level)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def make_security(directory: str):
    """A ``distributed.Security`` requiring mutual TLS, from a new self-signed certificate.

    One certificate serves as CA and as every role's certificate, as in
    Dask's ``Security.temporary()``, but with an elliptic-curve key (made in
    a millisecond, where RSA takes a good part of a second). Its files are
    written 0600 into ``directory`` for the worker processes' command lines.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from distributed.security import Security

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anyray-dask")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("anyray-dask")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    files = {"ca": os.path.join(directory, "ca.pem"), "key": os.path.join(directory, "key.pem")}
    files["cert"] = files["ca"]
    contents = {"ca": cert.public_bytes(serialization.Encoding.PEM),
                "key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())}
    for role, path in (("ca", files["ca"]), ("key", files["key"])):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(contents[role])
    roles = {f"tls_{r}_{k}": files[k] for r in ("client", "scheduler", "worker") for k in ("cert", "key")}
    security = Security(require_encryption=True, tls_ca_file=files["ca"], **roles)
    return security, files


def sweep_stale_dirs() -> None:
    """Remove the directories (TLS key, spill space) of private clusters whose driver was killed."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if not name.startswith(DIR_PREFIX) or not os.path.isdir(path) or os.stat(path).st_uid != os.getuid():
            continue
        try:
            with open(os.path.join(path, "driver.pid")) as f:
                pid = int(f.read())
        except (OSError, ValueError):
            continue  # not ours to judge: no record of its driver
        try:
            os.kill(pid, 0)
            continue  # its driver lives
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            continue

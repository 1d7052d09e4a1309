"""The node daemon's entry point: ``python -m anyray.adapters.cluster.boot`` (what ``anyray start`` runs).

It does first what can run while the rest loads, and only then loads the node's side (``daemon``):

1. reads the secrets line on stdin (or ``--secrets-fd``): never argv or the environment, which other users can
   read;
2. a head without a metadata server of its own starts one (``servers.Launch``): the server comes up while this
   process loads the node, which waits for it only when it opens the store;
3. forks the node's fork server while this process is still single-threaded and holds only the worker's side
   (``node.prefork``): the server, its workers and this daemon share those pages, and no second interpreter
   has to start and load them before the first worker;
4. runs the daemon (``daemon.run``), which writes to ``--ready-fd`` once it serves.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import threading

from ..node import prefork
from . import servers


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m anyray.adapters.cluster.boot")
    p.add_argument("--head", action="store_true")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--num-cpus", type=float)
    p.add_argument("--num-gpus", type=float)
    p.add_argument("--resources", default="{}")
    p.add_argument("--object-store-memory", type=int)
    p.add_argument("--metadata-port", type=int, default=0)
    p.add_argument("--settings", default="{}", help="JSON: further ports, Ray's dashboard flags")
    p.add_argument("--dir", required=True)
    p.add_argument("--secrets-fd", type=int, help="read the secrets line from this descriptor, not stdin")
    p.add_argument("--ready-fd", type=int, help="write to this descriptor, and close it, once the node serves")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="stop when stdin closes: the private cluster of one driver ends with the driver")
    return p


def _read_secrets(secrets_fd: int | None) -> dict:
    if secrets_fd is not None:
        with os.fdopen(secrets_fd, "rb") as f:
            line = f.readline()
    else:
        line = sys.stdin.buffer.readline()
    try:
        secrets = json.loads(line)
        secrets["token"].encode()
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
    return secrets


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    secrets = _read_secrets(args.secrets_fd)
    token = (secrets.get("token") or "").encode()
    if not token:
        print("anyray node: no token on stdin", file=sys.stderr)
        return 2
    metadata = secrets.get("metadata")
    launch = None
    if args.head and metadata in (None, "redis", "etcd"):
        tls_files = json.loads(args.settings).get("tls")  # the private server speaks TLS too
        launch = servers.Launch(metadata, args.dir, args.host, args.metadata_port,
                                password=secrets.get("redis_password"),
                                tls=servers.tls_files(tls_files) if tls_files else None)
    try:
        gc.freeze()  # what is loaded so far stays out of this daemon's collector, so the fork server keeps sharing it
        prefork.prefork(close_fds=() if args.ready_fd is None else (args.ready_fd,))
        from . import daemon
    except BaseException:
        if launch is not None:
            launch.stop()
        raise
    if args.exit_with_parent:
        def lifeline():
            sys.stdin.read()  # returns when the driver's end closes, however the driver ended
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=lifeline, name="anyray-lifeline", daemon=True).start()
    settings = json.loads(args.settings)
    if settings.get("object_spilling_directory"):  # read by the node's store (node.spill)
        os.environ["ANYRAY_OBJECT_SPILLING_DIRECTORY"] = settings["object_spilling_directory"]
    code = daemon.run(head=args.head, join=secrets.get("join"), host=args.host, port=args.port,
                      num_cpus=args.num_cpus, num_gpus=args.num_gpus, resources=json.loads(args.resources),
                      object_store_memory=args.object_store_memory, metadata=metadata, token=token,
                      directory=args.dir, metadata_port=args.metadata_port,
                      redis_password=secrets.get("redis_password"), settings=settings,
                      server=launch, ready_fd=args.ready_fd)
    if args.exit_with_parent and code == 0:  # a driver's private cluster: its directory goes with it (on a
        import shutil  # failed start the driver reads the log first, then removes it)

        shutil.rmtree(args.dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

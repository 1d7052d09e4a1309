"""Run a command against a real cluster on this machine: ``python tests/with_cluster.py [--metadata redis|etcd]
[--nodes N] -- COMMAND...``.

Starts a head (its own Redis or etcd server) and N-1 more node daemons on
loopback, each its own node with its own store, in a private cluster
directory; runs COMMAND with ``ANYRAY_CLUSTER_DIR`` set so
``address="auto"`` finds them; stops every daemon by pid whatever happens,
and exits with COMMAND's status. The tox ``cluster-*`` envs run the
conformance suite this way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from anyray.adapters.cluster import files, launch

# The conformance suite's session runtime wants 4 CPUs and {"Custom": 2}: the cluster as a whole offers them.
NODE_CPUS = 4
CUSTOM = {"Custom": 2}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metadata", choices=["redis", "etcd"], default="redis")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    directory = tempfile.mkdtemp(prefix="anyray-cluster-env-")
    os.chmod(directory, 0o700)
    procs = []
    try:
        token = files.read_token(files.new_token(directory))
        cpus = NODE_CPUS / args.nodes
        head, record = launch.spawn(directory=directory, token=token, head=True, num_cpus=cpus, resources=CUSTOM,
                                    metadata=args.metadata, port=0)
        procs.append(head)
        for _ in range(args.nodes - 1):
            procs.append(launch.spawn(directory=directory, token=token, head=False, address=record["address"],
                                      num_cpus=cpus)[0])
        print(f"with_cluster: {args.nodes} node(s), head at {record['address']}, metadata {args.metadata}",
              flush=True)
        env = dict(os.environ, ANYRAY_CLUSTER_DIR=directory)
        return subprocess.call(command, env=env)
    except launch.DaemonFailed as exc:
        print(f"with_cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        for proc in reversed(procs):
            launch.stop_pid(proc.pid)
            proc.wait()
        failed = [p for p in procs if p.returncode not in (0, None)]
        if failed:
            logs = os.path.join(directory, "logs")
            for name in sorted(os.listdir(logs)):
                with open(os.path.join(logs, name), errors="replace") as f:
                    print(f"--- {name}\n{f.read()[-4000:]}", file=sys.stderr)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

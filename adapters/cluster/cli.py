"""``anyray start``, ``stop``, ``status`` and ``list``: the cluster backend's commands."""

from __future__ import annotations

import json
import sys
import time

from . import files, launch


def add_commands(sub) -> None:
    p = sub.add_parser("start", help="start a node daemon on this machine: the head of a new cluster (--head) "
                                     "or a node joining one (--address)",
                       description="Start an anyray node daemon in the background.")
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument("--head", action="store_true", help="start a new cluster with this node as its head")
    role.add_argument("--address", help="join the cluster whose head (or any node) is at HOST:PORT")
    p.add_argument("--port", type=int, help="port to serve drivers and nodes on (head default 6380; else any free)")
    p.add_argument("--node-ip-address", default="127.0.0.1",
                   help="address to listen on and to tell other nodes (default 127.0.0.1: this machine only)")
    p.add_argument("--metadata", help="head only: redis://[:password@]host:port or etcd://host:port of a running "
                                      "server, or 'redis' / 'etcd' to start a private one (default: private Redis, "
                                      "else etcd)")
    p.add_argument("--metadata-port", type=int, help="head only: the port of the private metadata server "
                                                      "(default: a free one; fix it to open it in a firewall)")
    p.add_argument("--token-file", help="joining: the cluster token file copied from the head's machine "
                                        "(default: this machine's, or $ANYRAY_CLUSTER_TOKEN)")
    p.add_argument("--num-cpus", type=float, help="CPUs this node offers (default: all)")
    p.add_argument("--num-gpus", type=float, help="GPUs this node offers (default: those detected)")
    p.add_argument("--resources", default="{}", help='custom resources as JSON, e.g. \'{"accelerator": 1}\'')
    p.add_argument("--object-store-memory", type=int, help="bytes of shared memory for objects")
    p.add_argument("--block", action="store_true", help="stay in the foreground until Ctrl-C or `anyray stop`")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("stop", help="stop every anyray node daemon this user runs on this machine")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds to wait before SIGKILL (default 20)")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("status", help="the cluster's nodes, resources and usage")
    p.add_argument("--address", default="auto", help="a node's HOST:PORT (default: the cluster on this machine)")
    p.add_argument("--token-file")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("list", help="list the cluster's nodes, actors, tasks or objects")
    p.add_argument("what", choices=["nodes", "actors", "tasks", "objects"])
    p.add_argument("--address", default="auto", help="a node's HOST:PORT (default: the cluster on this machine)")
    p.add_argument("--token-file")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_list)


def _fail(message: str) -> int:
    print(f"anyray: {message}", file=sys.stderr)
    return 1


def cmd_start(args) -> int:
    try:
        resources = json.loads(args.resources)
        if not isinstance(resources, dict):
            raise ValueError
    except ValueError:
        return _fail(f"--resources must be a JSON object of name to amount, got {args.resources!r}.")
    directory = files.cluster_dir()
    if args.head:
        running = [r for r in files.local_nodes(directory) if r.get("head")]
        if running:
            return _fail(f"a cluster is already running on this machine (head at {running[0]['address']}); "
                         f"`anyray stop` it first, or join it with `anyray start --address {running[0]['address']}`.")
        token_path = files.new_token(directory)
        token = files.read_token(token_path)
        port = 6380 if args.port is None else args.port
    else:
        if args.metadata or args.metadata_port:
            return _fail("--metadata and --metadata-port are for the head; a joining node uses the cluster's.")
        try:
            token = files.read_token(args.token_file)
        except (OSError, ValueError) as exc:
            return _fail(str(exc))
        token_path = args.token_file
        port = args.port or 0
    if args.block:
        from .daemon import run

        return run(head=args.head, join=args.address, host=args.node_ip_address, port=port, num_cpus=args.num_cpus,
                   num_gpus=args.num_gpus, resources=resources, object_store_memory=args.object_store_memory,
                   metadata=args.metadata, token=token, directory=directory, metadata_port=args.metadata_port or 0)
    try:
        _proc, record = launch.spawn(directory=directory, token=token, head=args.head, address=args.address,
                                     host=args.node_ip_address, port=port, num_cpus=args.num_cpus,
                                     num_gpus=args.num_gpus, resources=resources,
                                     object_store_memory=args.object_store_memory, metadata=args.metadata,
                                     metadata_port=args.metadata_port)
    except launch.DaemonFailed as exc:
        return _fail(str(exc))
    address = record["address"]
    print(f"anyray node {record['node_id']} serving at {address} (pid {record['pid']}, log {record['log']})")
    if args.head:
        print(f"Metadata: {record.get('metadata')}. The cluster token is in {token_path} (readable by you only).\n"
              f"\nConnect a driver on this machine:   anyray.init(backend=\"cluster\", address=\"auto\")\n"
              f"Connect from another machine:      copy {token_path} there, then\n"
              f"    anyray.init(backend=\"cluster\", address=\"{address}\", token_file=\"/path/to/token\")\n"
              f"Add a node on another machine:     anyray start --address {address} --token-file /path/to/token\n"
              f"(other machines reach this one only if --node-ip-address is an address they can route to)\n"
              f"Stop the nodes of this machine:    anyray stop")
    return 0


def cmd_stop(args) -> int:
    nodes = files.local_nodes()
    if not nodes:
        print("No anyray node runs on this machine.")
        return 0
    nodes.sort(key=lambda r: bool(r.get("head")))  # the head last: the others may still talk to it
    for record in nodes:
        launch.stop_pid(record["pid"], args.timeout)
        print(f"Stopped the anyray node at {record['address']} (pid {record['pid']}).")
    return 0


def _connect(args):
    from .client import ClientLink, handshake, open_connection

    address = files.auto_address() if args.address == "auto" else args.address
    token = files.read_token(args.token_file)
    conn = open_connection(address, token)
    return ClientLink(conn, handshake(conn, "cli"), address)


def _ask(args, op: str, body=None):
    try:
        link = _connect(args)
    except (OSError, ValueError) as exc:
        raise SystemExit(_fail(str(exc))) from None
    try:
        return link.request(op, body, timeout=60)
    finally:
        link.close()


def _amount(name: str, value: float) -> str:
    if name in ("memory", "object_store_memory"):
        return f"{value / 2**30:.1f} GiB"
    return f"{value:g}"


def cmd_status(args) -> int:
    status = _ask(args, "status")
    nodes = sorted(status["nodes"], key=lambda n: (not n.get("head"), n["address"]))
    now = status["now"]
    print(f"anyray cluster (metadata: {status['metadata']}; a node is dead once its lease of "
          f"{status['lease_seconds']:g} s lapses)")
    print(f"\nNodes: {len(nodes)} alive")
    for n in nodes:
        age = max(now - n.get("heartbeat", now), 0.0)
        used = {k: n["resources"][k] - n["available"].get(k, 0.0) for k in n["resources"]}
        print(f"  {n['node_id']}  {n['address']:<21} {'head ' if n.get('head') else ''}host {n['host']}, "
              f"pid {n['pid']}, heartbeat {age:.1f} s ago")
        shown = ", ".join(f"{k} {_amount(k, used[k])}/{_amount(k, v)}" for k, v in sorted(n["resources"].items())
                          if not k.startswith("node:"))
        print(f"      used/total: {shown}")
    alive = {n["node_id"] for n in nodes}
    dead = sorted((d for d in status.get("dead", ()) if d["node_id"] not in alive), key=lambda d: -d["ended_at"])
    if dead:
        print(f"\nDead nodes (listed for an hour): {len(dead)}")
        for d in dead:
            print(f"  {d['node_id']}  {d['address']:<21} host {d['host']}, pid {d['pid']}: {d['ended']} "
                  f"{max(now - d['ended_at'], 0.0):.1f} s ago (last heartbeat "
                  f"{max(now - d.get('heartbeat', d['ended_at']), 0.0):.1f} s ago)")
    total: dict = {}
    free: dict = {}
    for n in nodes:
        for k, v in n["resources"].items():
            if not k.startswith("node:"):
                total[k] = total.get(k, 0.0) + v
                free[k] = free.get(k, 0.0) + n["available"].get(k, 0.0)
    print("\nResources (used/total):")
    for k in sorted(total):
        print(f"  {k}: {_amount(k, total[k] - free[k])}/{_amount(k, total[k])}")
    usage = status["usage"]
    print(f"\nObject store of the node answering: {usage.get('num_objects', 0)} objects, "
          f"{usage.get('shared_bytes', 0) / 2**20:.1f} MiB of {usage.get('capacity', 0) / 2**30:.1f} GiB "
          f"shared memory in use")
    return 0


def cmd_list(args) -> int:
    rows = _ask(args, "list", args.what)
    if args.format == "json":
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print(f"No {args.what}.")
        return 0
    if args.what == "nodes":
        rows = [{"node_id": r["node_id"], "address": r["address"], "head": r.get("head", False),
                 "host": r["host"], "pid": r["pid"],
                 "CPU": r["resources"].get("CPU", 0), "started": time.strftime(
                     "%Y-%m-%d %H:%M:%S", time.localtime(r.get("started", 0)))} for r in rows]
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.upper().ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys))
    return 0

"""``anyray start``, ``stop``, ``status`` and ``list``: the cluster backend's commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import files, launch, tls
from .address import RAY_CLIENT_PORT, connect, resolve, token_from_password
from .redaction import redact

# Flags of Ray's `ray start` that anyray does not have: named in a clear error rather than argparse's bare
# "unrecognized arguments" (the ones it has are parsed as Ray parses them).
RAY_START_FLAGS = frozenset({
    "--min-worker-port", "--max-worker-port", "--worker-port-list", "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port", "--dashboard-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
    "--plasma-directory", "--object-spilling-directory", "--autoscaling-config", "--no-redirect-output",
    "--temp-dir", "--ray-debugger-external", "--disable-usage-stats", "--include-log-monitor",
    "--enable-resource-isolation", "--system-reserved-cpu", "--system-reserved-memory", "--cgroup-path",
    "--proxy-server-url", "--log-style", "--log-color", "--redis-shard-ports", "--redis-max-memory",
    "--gcs-server-port", "--memory", "--labels", "--labels-file", "--node-name", "--storage", "--system-config",
    "--plasma-store-socket-name", "--raylet-socket-name", "--java-worker-options", "--code-search-path",
    "--load-code-from-local", "--tracing-startup-hook", "--lru-evict", "--enable-object-reconstruction",
    "--redis-username", "--verbose", "--enable", "--num-redis-shards", "--redis-max-clients",
})


def _unknown_start_flags(flags: list[str]) -> str:
    names = [f.split("=", 1)[0] for f in flags]
    ray = [n for n in names if n.replace("_", "-") in RAY_START_FLAGS]
    other = [n for n in names if n not in ray]
    parts = []
    if ray:
        parts.append(f"Ray's {', '.join(ray)} {'is' if len(ray) == 1 else 'are'} not supported by `anyray start`; "
                     f"drop {'it' if len(ray) == 1 else 'them'} (the Ray flags anyray takes: --head, --address, "
                     f"--port, --redis-password, --node-ip-address, --num-cpus, --num-gpus, --resources, "
                     f"--object-store-memory, --object-spilling-directory, --object-manager-port, --node-manager-port, "
                     f"--ray-client-server-port, --include-dashboard, --dashboard-host, --dashboard-port, --block).")
    if other:
        parts.append(f"Unknown option{'s' if len(other) > 1 else ''} {', '.join(other)} "
                     f"(see `anyray start --help`).")
    return " ".join(parts)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, got {text!r}") from None
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, got {text!r}")
    return value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_commands(sub) -> None:
    p = sub.add_parser("start", help="start a node daemon on this machine: the head of a new cluster (--head) "
                                     "or a node joining one (--address)",
                       description="Start an anyray node daemon in the background. Takes the flags of Ray's "
                                   "`ray start` listed here; another Ray flag is an error that names it.")
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument("--head", action="store_true", help="start a new cluster with this node as its head")
    role.add_argument("--address", help="join a cluster: HOST:PORT of any of its nodes (what the head printed) "
                                        "or of its Redis or etcd server, ray://HOST:PORT, redis://HOST:PORT "
                                        "or etcd://HOST:PORT[,HOST:PORT...]")
    p.add_argument("--port", type=_port,
                   help="the port this node serves drivers and nodes on, the cluster's address on the head "
                        "(head default 6380; else any free)")
    p.add_argument("--redis-password", metavar="PASSWORD",
                   help="the cluster's shared secret, as Ray's: on the head, the password of the cluster's own "
                        "Redis, and the cluster token is derived from it, so that a machine that knows it joins "
                        "(`--address HEAD:PORT --redis-password P`) or connects (init(address=..., "
                        "_redis_password=P)) without a copy of the token file; when joining, that password "
                        "(default $ANYRAY_REDIS_PASSWORD)")
    p.add_argument("--node-ip-address", default="127.0.0.1",
                   help="address to listen on and to tell other nodes (default 127.0.0.1: this machine only)")
    p.add_argument("--metadata", help="head only: redis://[:password@]host:port or etcd://host:port of a running "
                                      "server (an etcd cluster's members: etcd://h1:p1,h2:p2,h3:p3), or 'redis' / "
                                      "'etcd' to start a private one (default: private Redis, "
                                      "else etcd)")
    p.add_argument("--metadata-port", type=_port, help="head only: the port of the private metadata server "
                                                        "(default: a free one; fix it to open it in a firewall)")
    p.add_argument("--token-file", help="joining: the cluster token file copied from the head's machine "
                                        "(default: derived from --redis-password, else this machine's, or "
                                        "$ANYRAY_CLUSTER_TOKEN)")
    p.add_argument("--num-cpus", type=float, help="CPUs this node offers (default: all)")
    p.add_argument("--num-gpus", type=float, help="GPUs this node offers (default: those detected)")
    p.add_argument("--resources", default="{}", help='custom resources as JSON, e.g. \'{"accelerator": 1}\'')
    p.add_argument("--object-store-memory", type=int, help="bytes of shared memory for objects")
    p.add_argument("--object-spilling-directory", metavar="DIR",
                   help="where this node spills objects when its shared memory is full (default: under the temp "
                        "dir, anyray-spill-<uid>)")
    p.add_argument("--object-manager-port", type=_port,
                   help="a fixed port on which other nodes read this node's objects (default: the node's port)")
    p.add_argument("--node-manager-port", type=_port,
                   help="a fixed port this node also serves drivers and nodes on (on a joining node without "
                        "--port: its port)")
    p.add_argument("--ray-client-server-port", type=_port,
                   help=f"head only: the port ray://HOST:PORT reaches the cluster on (default "
                        f"{RAY_CLIENT_PORT}, taken only when free); any node's address works after ray:// too")
    p.add_argument("--include-dashboard", type=_boolean, metavar="BOOL",
                   help="head only: serve the dashboard, a web page of the cluster behind the cluster token "
                        "(default true)")
    p.add_argument("--dashboard-host", help="head only: the address the dashboard listens on (default 127.0.0.1: "
                                            "this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--dashboard-port", type=_port,
                   help="head only: the dashboard's port (default 8265, as Ray; if another process holds it, the "
                        "head starts without a dashboard and says so in its log)")
    p.add_argument("--metrics-export-port", type=_port,
                   help="the port this node serves Prometheus' /metrics on, at --node-ip-address, without "
                        "authentication as Ray (default: a free port, printed and in `anyray status`)")
    p.add_argument("--block", action="store_true", help="stay in the foreground until Ctrl-C or `anyray stop`")
    p.add_argument("--tls", action="store_true",
                   help="TLS on every TCP connection of the cluster; the head makes the cluster's CA and its own "
                        "certificate in the cluster directory (tls/), unless --tls-ca/--tls-cert/--tls-key name files")
    p.add_argument("--tls-ca", metavar="FILE", help="the cluster CA's certificate (with --tls-cert and --tls-key; "
                   "also $ANYRAY_TLS_CA, or Ray's RAY_USE_TLS=1 with RAY_TLS_CA_CERT)")
    p.add_argument("--tls-cert", metavar="FILE", help="this node's certificate, signed by the CA "
                   "($ANYRAY_TLS_CERT, RAY_TLS_SERVER_CERT)")
    p.add_argument("--tls-key", metavar="FILE", help="its private key, mode 0600 ($ANYRAY_TLS_KEY, RAY_TLS_SERVER_KEY)")
    p.set_defaults(func=cmd_start, unknown_flags=_unknown_start_flags)

    p = sub.add_parser("stop", help="stop every anyray node daemon this user runs on this machine")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds to wait before SIGKILL (default 20)")
    p.add_argument("-f", "--force", action="store_true", help="SIGKILL the daemons and what they started at once "
                                                             "(Ray's `ray stop --force`)")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("status", help="the cluster's nodes, resources and usage")
    p.add_argument("--address", default="auto", help="the cluster's address, as for `anyray start --address` "
                                                     "(default: the cluster on this machine)")
    p.add_argument("--token-file")
    p.add_argument("--redis-password", metavar="PASSWORD", help="the cluster's Redis password (see `anyray start`)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("list", help="list the cluster's nodes, actors, tasks, objects, workers or placement "
                                    "groups (what anyray.util.state lists, with Ray's field names)")
    p.add_argument("what", choices=["nodes", "actors", "tasks", "objects", "workers", "placement-groups"])
    p.add_argument("--address", default="auto", help="the cluster's address, as for `anyray start --address` "
                                                     "(default: the cluster on this machine)")
    p.add_argument("--token-file")
    p.add_argument("--redis-password", metavar="PASSWORD", help="the cluster's Redis password (see `anyray start`)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("tls-cert", help="issue a certificate of this machine's cluster CA (`anyray start --head "
                                        "--tls`) for a node or driver on another machine",
                       description="Write ca.crt, NAME.crt and NAME.key (0600) to --out, signed by the CA that "
                                   "`anyray start --head --tls` made on this machine. Copy them to the other "
                                   "machine (as you would a key) and pass them with --tls-ca/--tls-cert/--tls-key "
                                   "or ANYRAY_TLS_CA/ANYRAY_TLS_CERT/ANYRAY_TLS_KEY.")
    p.add_argument("--out", required=True, help="the directory to write to (made 0700)")
    p.add_argument("--host", action="append", default=[], help="an address or name of the machine (repeatable)")
    p.add_argument("--name", default="node", help="the files' base name (default node)")
    p.set_defaults(func=cmd_tls_cert)
    from .job_cli import add_commands as add_job_commands  # `anyray job ...`

    add_job_commands(sub)


def _fail(message: str) -> int:
    print(f"anyray: {message}", file=sys.stderr)
    return 1


PASSWORD_ENV = "ANYRAY_REDIS_PASSWORD"  # --redis-password without putting it in argv


def _password(args) -> str | None:
    return getattr(args, "redis_password", None) or os.environ.get(PASSWORD_ENV) or None


def cmd_start(args) -> int:
    try:
        resources = json.loads(args.resources)
        if not isinstance(resources, dict):
            raise ValueError
    except ValueError:
        return _fail(f"--resources must be a JSON object of name to amount, got {args.resources!r}.")
    directory = files.cluster_dir()
    password = _password(args)
    settings = {"object_manager_port": args.object_manager_port, "include_dashboard": args.include_dashboard,
                "dashboard_host": args.dashboard_host, "dashboard_port": args.dashboard_port,
                "object_spilling_directory": args.object_spilling_directory and os.path.abspath(
                    os.path.expanduser(args.object_spilling_directory)),
                "metrics_export_port": args.metrics_export_port}
    join = metadata = None
    if args.head:
        running = [r for r in files.local_nodes(directory) if r.get("head")]
        if running:
            return _fail(f"a cluster is already running on this machine (head at {running[0]['address']}); "
                         f"`anyray stop` it first, or join it with `anyray start --address {running[0]['address']}`.")
        if args.token_file:
            return _fail("--token-file is for joining; the head writes the cluster's token file.")
        token_path = files.new_token(directory, token_from_password(password) if password else None)
        token = files.read_token(token_path)
        port = next((p for p in (args.port, args.node_manager_port) if p is not None), 6380)
        metadata = args.metadata
        if args.ray_client_server_port is None:
            settings.update(ray_client_server_port=RAY_CLIENT_PORT, ray_client_port_default=True)
        else:
            settings["ray_client_server_port"] = args.ray_client_server_port
    else:
        if args.metadata or args.metadata_port:
            return _fail("--metadata and --metadata-port are for the head; a joining node uses the cluster's.")
        if args.ray_client_server_port is not None:
            return _fail("--ray-client-server-port is for the head: ray://HOST:PORT of a joining node is its "
                         "own address.")
        try:
            target = resolve(args.address, password=password, token_file=args.token_file)
            conn, _setup, join, token = connect(target, "cli")
            conn.close()
        except (OSError, ValueError) as exc:
            return _fail(redact(exc))
        if target.metadata is not None:  # given the metadata server, the node uses it as given
            metadata, join = target.metadata, None
        token_path = args.token_file
        port = next((p for p in (args.port, args.node_manager_port) if p is not None), 0)
    try:
        tls_files = _tls_files(args, directory, conn if not args.head else None)
    except (OSError, ValueError) as exc:
        return _fail(exc)
    if tls_files is not None:
        settings["tls"] = tls_files.as_dict()
    if args.head and args.include_dashboard is None:
        settings["include_dashboard"] = True  # Ray's default: the head serves the dashboard
    settings["node_manager_port"] = args.node_manager_port
    settings = {k: v for k, v in settings.items() if v is not None}
    options = dict(directory=directory, head=args.head, host=args.node_ip_address, port=port,
                   num_cpus=args.num_cpus, num_gpus=args.num_gpus, resources=resources,
                   object_store_memory=args.object_store_memory, metadata_port=args.metadata_port, extra=settings)
    secrets = dict(join=join, metadata=metadata, redis_password=password if args.head else None)
    if args.block:
        return _exec_daemon(options, token, secrets)
    try:
        _proc, record = launch.spawn(token=token, address=join, metadata=metadata, **options,
                                     redis_password=secrets["redis_password"])
    except launch.DaemonFailed as exc:
        return _fail(redact(exc))
    node_address = record["address"]
    print(f"anyray node {record['node_id']} serving at {node_address} (pid {record['pid']}, log {record['log']})")
    extra = {k: v for k, v in record.get("ports", {}).items() if k != "node"}
    if extra:
        print("Also serving on " + ", ".join(f"port {v} ({k})" for k, v in extra.items()) + ".")
    if record.get("dashboard_url"):
        print(f"Dashboard: {record['dashboard_url']} (log in with the cluster token)")
    if args.head:
        secret = "--redis-password <the password>" if password else f"--token-file <a copy of {token_path}>"
        driver_secret = ('_redis_password="<the password>"' if password
                         else 'token_file="<a copy of the token file>"')
        print(f"Metadata: {record.get('metadata')}. The cluster token is in {token_path} (readable by you only"
              f"{'; derived from the Redis password' if password else ''}).\n"
              f"\nConnect a driver on this machine:   ray.init(address=\"auto\")   (import anyray as ray)\n"
              f"Connect from another machine:      ray.init(address=\"{node_address}\", {driver_secret})\n"
              f"Add a node on another machine:     anyray start --address {node_address} {secret}\n"
              f"(other machines reach this one only if --node-ip-address is an address they can route to)\n"
              f"Stop the nodes of this machine:    anyray stop")
        if tls_files is not None:
            print(f"TLS: every TCP connection; CA {tls_files.ca}, certificate {tls_files.cert}. This machine's "
                  f"drivers and nodes use these files; for another machine, issue its own with `anyray tls-cert "
                  f"--out DIR --host ITS_ADDRESS` and pass them (--tls-ca/--tls-cert/--tls-key, or ANYRAY_TLS_CA, "
                  f"ANYRAY_TLS_CERT, ANYRAY_TLS_KEY).")
    return 0


def _tls_files(args, directory: str, conn) -> tls.TLSFiles | None:
    """The TLS files the node serves with: those named (flags, else the environment), else with ``--tls`` the
    head's new ones; a joining node of a TLS cluster uses what it reached the cluster with (``conn``'s)."""
    given = [args.tls_ca, args.tls_cert, args.tls_key]
    if any(given):
        if not all(given):
            raise ValueError("TLS needs --tls-ca, --tls-cert and --tls-key together.")
        return tls.TLSFiles(*(os.path.abspath(os.path.expanduser(f)) for f in given)).check()
    found = tls.from_env()
    if found is not None:
        return found
    if isinstance(conn, tls.TLSConnection):
        return conn.files
    if args.tls and args.head:
        return tls.cluster_files(directory, hosts=(args.node_ip_address,))
    if args.tls:
        raise ValueError("--tls on a joining node: the cluster does not use TLS (its head was started without "
                         "--tls).")
    return None


def cmd_tls_cert(args) -> int:
    ca_dir = os.path.join(files.cluster_dir(), "tls")
    ca_cert, ca_key = os.path.join(ca_dir, "ca.crt"), os.path.join(ca_dir, "ca.key")
    if not os.path.isfile(ca_key):
        return _fail(f"no cluster CA on this machine ({ca_key}): run this where `anyray start --head --tls` ran.")
    out = os.path.abspath(os.path.expanduser(args.out))
    made = tls.issue(ca_cert, ca_key, out, args.name, args.host)
    import shutil

    shutil.copyfile(ca_cert, os.path.join(out, "ca.crt"))
    print(f"Wrote {os.path.join(out, 'ca.crt')}, {made.cert} and {made.key} (keep the key secret). On the other "
          f"machine: anyray start --address ... --tls-ca ca.crt --tls-cert {args.name}.crt --tls-key {args.name}.key "
          f"(a driver: ANYRAY_TLS_CA, ANYRAY_TLS_CERT, ANYRAY_TLS_KEY).")
    return 0


def _exec_daemon(options: dict, token: bytes, secrets: dict) -> int:
    """``--block``: this process becomes the daemon (its argv without the password the user typed; the
    secrets through a pipe), in the foreground until Ctrl-C or `anyray stop`."""
    argv = launch.daemon_argv(**options)
    read, write = os.pipe()
    os.write(write, launch.secrets_line(token, **secrets))  # far less than a pipe's buffer
    os.close(write)
    os.set_inheritable(read, True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], [*argv, "--secrets-fd", str(read)])
    return 1  # not reached


def cmd_stop(args) -> int:
    nodes = files.local_nodes()
    if not nodes:
        print("No anyray node runs on this machine.")
        return 0
    nodes.sort(key=lambda r: bool(r.get("head")))  # the head last: the others may still talk to it
    for record in nodes:
        if args.force:
            launch.kill_tree(record["pid"])
            try:
                os.unlink(record["file"])
            except OSError:
                pass
            print(f"Killed the anyray node at {record['address']} (pid {record['pid']}) and its processes.")
            continue
        launch.stop_pid(record["pid"], args.timeout)
        print(f"Stopped the anyray node at {record['address']} (pid {record['pid']}).")
    return 0


def _connect(args):
    from .client import ClientLink

    target = resolve(args.address, password=_password(args), token_file=args.token_file)
    conn, setup, node, _token = connect(target, "cli")
    return ClientLink(conn, setup, node)


def _ask(args, op: str, body=None):
    try:
        link = _connect(args)
    except (OSError, ValueError) as exc:
        raise SystemExit(_fail(redact(exc))) from None
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
    if status.get("dashboard_url"):  # the answering node's: the head serves the cluster's
        print(f"Dashboard: {status['dashboard_url']}")
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
    _print_groups(status.get("placement_groups", ()))
    usage = status["usage"]
    print(f"\nObject store of the node answering: {usage.get('num_objects', 0)} objects, "
          f"{usage.get('shared_bytes', 0) / 2**20:.1f} MiB of {usage.get('capacity', 0) / 2**30:.1f} GiB "
          f"shared memory in use")
    if usage.get("spilled_objects"):
        print(f"  spilled to disk: {usage['spilled_objects']} objects, {usage['spilled_bytes'] / 2**20:.1f} MiB in "
              f"{usage.get('spill_directory')}")
    return 0


# The columns of `anyray list`'s table (json has every field of the rows: anyray.ports.StatePort).
TABLE_COLUMNS = {
    "actors": ["actor_id", "class_name", "state", "name", "pid", "num_restarts", "node_id"],
    "tasks": ["task_id", "name", "state", "type", "worker_pid", "node_id"],
    "objects": ["object_id", "object_size", "shared_memory", "node_id"],
    "workers": ["worker_id", "worker_type", "pid", "is_alive", "node_id"],
}


def _print_groups(groups) -> None:
    """The placement groups in ``anyray status``: how many per state, and each one not removed."""
    if not groups:
        return
    states: dict = {}
    for g in groups:
        states[g["state"]] = states.get(g["state"], 0) + 1
    print(f"\nPlacement groups: {', '.join(f'{n} {s}' for s, n in sorted(states.items()))}")
    for g in groups:
        if g["state"] != "REMOVED":
            print(f"  {g['placement_group_id']}  {g['state']:<12} {g['strategy']:<13} {g['name'] or '-'} "
                  f"[{g['bundles']}] on {g['nodes'] or '-'}{' (detached)' if g['detached'] else ''}")


def cmd_list(args) -> int:
    rows = _ask(args, "list", args.what)
    if args.format == "json":
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print(f"No {args.what.replace('-', ' ')}.")
        return 0
    if args.what == "nodes":
        rows = [{"node_id": r["node_id"], "address": r["address"], "head": r.get("head", False),
                 "host": r["host"], "pid": r["pid"],
                 "CPU": r["resources"].get("CPU", 0), "started": time.strftime(
                     "%Y-%m-%d %H:%M:%S", time.localtime(r.get("started", 0)))} for r in rows]
    keys = TABLE_COLUMNS.get(args.what) or list(rows[0])
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.upper().ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys))
    return 0

"""What a cluster keeps on each machine: the token, and a record of each node daemon running here.

All of it lives in one directory only its owner can enter
(``$ANYRAY_CLUSTER_DIR``, else ``<tmp>/anyray-<uid>``): ``token`` (mode
0600) holds the cluster's secret, ``nodes/<port>.json`` describes each
daemon of this machine (pid, address, node id, whether it is the head), and
``address`` names the node ``address="auto"`` connects to.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile

TOKEN_ENV = "ANYRAY_CLUSTER_TOKEN"  # the token itself, for a process that has no token file


def cluster_dir(create: bool = True) -> str:
    path = os.environ.get("ANYRAY_CLUSTER_DIR") or os.path.join(tempfile.gettempdir(), f"anyray-{os.getuid()}")
    if create:
        os.makedirs(os.path.join(path, "nodes"), mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    return path


def new_token(directory: str, token: bytes | None = None) -> str:
    """Write ``token`` (default: a new random one) to ``<directory>/token`` (0600); return the path."""
    path = os.path.join(directory, "token")
    fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write((token.decode() if token else secrets.token_hex(32)) + "\n")
    os.replace(path + ".new", path)
    return path


def read_token(path: str | None = None) -> bytes:
    """The cluster token: from ``path``, else ``$ANYRAY_CLUSTER_TOKEN``, else this machine's token file."""
    if path is None and os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip().encode()
    path = path or os.path.join(cluster_dir(create=False), "token")
    try:
        with open(path) as f:
            token = f.read().strip()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"No cluster token at {path}. `anyray start --head` writes it there; on another machine copy it "
            f"and pass its path (`--token-file`, or init(..., token_file=...)), or set ${TOKEN_ENV}; or, if the "
            f"head was started with --redis-password, pass that password (`--redis-password`, or "
            f"init(..., _redis_password=...)).") from None
    if not token:
        raise ValueError(f"The cluster token file {path} is empty.")
    mode = os.stat(path).st_mode & 0o077
    if mode:
        raise PermissionError(f"The cluster token file {path} can be read by others (mode {oct(mode)}); "
                              f"run `chmod 600 {path}`.")
    return token.encode()


def write_node(directory: str, port: int, record: dict) -> str:
    os.makedirs(os.path.join(directory, "nodes"), mode=0o700, exist_ok=True)
    path = os.path.join(directory, "nodes", f"{port}.json")
    with open(path + ".new", "w") as f:
        json.dump(record, f)
    os.replace(path + ".new", path)
    return path


def local_nodes(directory: str | None = None) -> list[dict]:
    """The records of the node daemons on this machine whose process still runs."""
    directory = directory or cluster_dir(create=False)
    out = []
    try:
        names = sorted(os.listdir(os.path.join(directory, "nodes")))
    except FileNotFoundError:
        return out
    for name in names:
        path = os.path.join(directory, "nodes", name)
        try:
            with open(path) as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        if _alive(record.get("pid")):
            record["file"] = path
            out.append(record)
        else:  # a daemon that died without cleaning up (SIGKILL)
            try:
                os.unlink(path)
            except OSError:
                pass
    return out


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed daemon whose parent has not reaped it yet (a zombie) is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[:1] != ["Z"]
    except OSError:
        return True


def auto_address(directory: str | None = None) -> str:
    """The address of a node of the cluster started on this machine (``address="auto"``)."""
    nodes = local_nodes(directory)
    if not nodes:
        raise ConnectionError("address='auto' found no anyray cluster on this machine. Start one with "
                              "`anyray start --head`, or pass the address of a node.")
    nodes.sort(key=lambda r: not r.get("head"))  # the head first
    return nodes[0]["address"]

"""The TCP ports a node daemon listens on: its own, and the further ones Ray's flags name."""

from __future__ import annotations

import socket

from ..common.sockets import listening


def listen(host: str, port: int, flag: str) -> socket.socket:
    """A socket listening on ``host:port``; OSError naming ``flag`` when the port is taken."""
    return listening(host, port, 64, f"cannot listen on {{host}}:{{port}} ({flag}): {{reason}}; another process "
                                     f"uses it: pick another port")


def listen_extra(host: str, settings: dict, ports: dict, log) -> list[socket.socket]:
    """The further ports a node serves on, each speaking the node's protocol: Ray Client's
    (``ray://HOST:10001``; the head takes the default one only when it is free), the node manager's, and
    the object manager's (other nodes read objects there). Each one taken is added to ``ports`` by name."""
    address = f"{host}:{ports['node']}"
    socks = []
    wanted = [("object manager", settings.get("object_manager_port"), "--object-manager-port"),
              ("node manager", settings.get("node_manager_port"), "--node-manager-port"),
              ("Ray Client", settings.get("ray_client_server_port"), "--ray-client-server-port")]
    try:
        for what, port, flag in wanted:
            if port is None or port in ports.values():
                continue
            try:
                sock = listen(host, int(port), flag)
            except OSError:
                if what == "Ray Client" and settings.get("ray_client_port_default"):
                    log(f"Ray Client's port {port} is taken, so ray://{host}:{port} does not reach this "
                        f"node; ray://{address} does")
                    continue
                raise
            socks.append(sock)
            ports[what] = sock.getsockname()[1]
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks

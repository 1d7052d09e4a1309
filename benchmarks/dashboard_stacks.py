"""The dashboard's web stack, chosen by measurement: aiohttp, starlette + uvicorn, and the stdlib's
``http.server`` in a thread, each serving the same ``/api/nodes`` JSON from a child process.

For each: the time to import the stack (in a fresh interpreter), the resident memory the running server adds to
the process (RSS after it serves, minus RSS before the import), and requests per second of ``GET /api/nodes``
from one keep-alive client in this process (so the numbers compare stacks on one machine, not machines).

    python benchmarks/dashboard_stacks.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time

CHILD = r'''
import json, os, sys, time, threading
import psutil
proc = psutil.Process()
rss0 = proc.memory_info().rss
stack, port = sys.argv[1], int(sys.argv[2])
BODY = json.dumps([{"node_id": f"{i:032x}", "node_ip": "127.0.0.1", "state": "ALIVE",
                    "resources_total": {"CPU": 8.0, "memory": 2.0**34}} for i in range(4)]).encode()
t0 = time.perf_counter()
if stack == "aiohttp":
    import asyncio
    from aiohttp import web
elif stack == "starlette":
    import asyncio
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
else:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
t_import = time.perf_counter() - t0

def serve():
    if stack == "aiohttp":
        async def nodes(request):
            return web.Response(body=BODY, content_type="application/json")
        async def main():
            app = web.Application()
            app.router.add_get("/api/nodes", nodes)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            await asyncio.Event().wait()
        asyncio.run(main())
    elif stack == "starlette":
        async def nodes(request):
            return Response(BODY, media_type="application/json")
        app = Starlette(routes=[Route("/api/nodes", nodes)])
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False))
        server.install_signal_handlers = lambda: None
        asyncio.run(server.serve())
    else:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)
            def log_message(self, *a):
                pass
        ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()

threading.Thread(target=serve, daemon=True).start()
print(json.dumps({"import_s": t_import}), flush=True)
sys.stdin.readline()
print(json.dumps({"rss_added": proc.memory_info().rss - rss0}), flush=True)
sys.stdin.readline()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(stack: str, seconds: float) -> dict:
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", CHILD, stack, str(port)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        out = json.loads(child.stdout.readline())
        deadline = time.time() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/api/nodes")
                conn.getresponse().read()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        count, end = 0, time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < end:
            conn.request("GET", "/api/nodes")
            conn.getresponse().read()
            count += 1
        out["requests_per_s"] = count / (time.perf_counter() - start)
        conn.close()
        child.stdin.write("\n")
        child.stdin.flush()
        out.update(json.loads(child.stdout.readline()))
        return out
    finally:
        child.kill()
        child.wait()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--stacks", default="aiohttp,starlette,stdlib")
    args = parser.parse_args()
    print(f"{'stack':<12} {'import ms':>10} {'RSS added MiB':>14} {'GET /api/nodes /s':>18}")
    for stack in args.stacks.split(","):
        r = measure(stack, args.seconds)
        print(f"{stack:<12} {r['import_s'] * 1000:>10.0f} {r['rss_added'] / 2**20:>14.1f} "
              f"{r['requests_per_s']:>18.0f}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "0")
    sys.exit(main())

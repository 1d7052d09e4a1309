"""The dashboard's HTTP side: its login (the cluster token posted once, a derived HttpOnly SameSite=Strict
cookie, 401 and a redirect for everyone else) and its JSON API under /api/, on a single-machine driver
(``init(include_dashboard=True)``) and on a cluster head (``anyray start --head``), with real processes."""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import time

import pytest
from dashboard_http import get_json, login, request, wait_for
from test_cluster import WAIT, cli, start_head

import anyray
from anyray.adapters.cluster import files, tls
from anyray.adapters.dashboard.client import call_json
from anyray.util import state


@pytest.fixture
def driver_dashboard():
    ctx = anyray.init(backend="multiprocess", num_cpus=2, include_dashboard=True, dashboard_port=0)
    with open(ctx.dashboard_token_file) as f:
        token = f.read()
    yield ctx, token
    anyray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@anyray.remote
class Counter:
    def __init__(self):
        self.n = 0

    def add(self):
        self.n += 1
        print(f"counter at {self.n}", flush=True)
        return self.n


@anyray.remote
def fails():
    raise ValueError("the dashboard shows this")


def test_a_visitor_without_the_token_is_refused_and_the_login_sets_a_derived_cookie(driver_dashboard):
    ctx, token = driver_dashboard
    url = ctx.dashboard_url
    assert url.startswith("http://127.0.0.1:")  # loopback unless dashboard_host says otherwise
    status, headers, body = request(url, "GET", "/api/nodes")
    assert status == 401 and b"log in" in body
    status, headers, _ = request(url, "GET", "/")
    assert (status, headers["Location"]) == (303, "/login")
    status, _, body = request(url, "GET", "/login")
    assert status == 200 and b'name="token"' in body and b'method="post"' in body
    status, headers, body = request(url, "POST", "/login", "token=not-the-token",
                                    {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 401 and "Set-Cookie" not in headers and b"not the cluster" in body
    status, _, _ = request(url, "GET", "/api/nodes", headers={"Cookie": "anyray_dashboard=" + "0" * 64})
    assert status == 401

    status, headers, _ = request(url, "POST", "/login", "token=" + token,
                                 {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 303 and headers["Location"] == "/"
    set_cookie = headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert token not in set_cookie  # a value derived from the token, not the token
    cookie = set_cookie.split(";")[0]
    status, _, body = request(url, "GET", "/", headers={"Cookie": cookie})
    assert status == 200 and b"/static/app.js" in body
    status, _, body = request(url, "GET", "/static/app.js")
    assert status == 200 and b"/api/" in body
    assert get_json(url, "/api/info", cookie)["backend"] == "multiprocess"
    # a program may send the token as a bearer instead
    status, _, _ = request(url, "GET", "/api/nodes", headers={"Authorization": "Bearer " + token})
    assert status == 200
    status, _, _ = request(url, "GET", "/api/nodes", headers={"Authorization": "Bearer wrong"})
    assert status == 401


def test_the_api_lists_actors_tasks_errors_objects_workers_logs_and_the_timeline(driver_dashboard):
    ctx, token = driver_dashboard
    url, cookie = ctx.dashboard_url, login(ctx.dashboard_url, token)
    counter = Counter.options(name="tally").remote()
    assert anyray.get(counter.add.remote(), timeout=WAIT) == 1
    with pytest.raises(ValueError):
        anyray.get(fails.remote(), timeout=WAIT)
    big = anyray.put(b"x" * 300_000)

    nodes = get_json(url, "/api/nodes", cookie)
    assert [n["state"] for n in nodes] == ["ALIVE"] and nodes[0]["resources_total"]["CPU"] == 2
    actors = get_json(url, "/api/actors", cookie)
    assert [(a["class_name"], a["name"], a["state"], a["num_restarts"]) for a in actors] == \
        [("Counter", "tally", "ALIVE", 0)]
    tasks = get_json(url, "/api/tasks", cookie)
    failed = [t for t in tasks if t["name"] == "fails"]
    assert [t["state"] for t in failed] == ["FAILED"]
    assert "Traceback" in failed[0]["error_message"] and "the dashboard shows this" in failed[0]["error_message"]
    done = [t for t in tasks if t["name"] == "Counter.add"]
    assert [t["state"] for t in done] == ["FINISHED"] and done[0]["end_time_ms"] >= done[0]["start_time_ms"]
    objects = {o["object_id"]: o for o in get_json(url, "/api/objects", cookie)}
    assert objects[big.hex()]["object_size"] >= 300_000
    workers = get_json(url, "/api/workers", cookie)
    actor_pid = actors[0]["pid"]
    worker = next(w for w in workers if w["pid"] == actor_pid)
    log = wait_for(lambda: request(url, "GET", f"/api/workers/{worker['worker_id']}/log",
                                   headers={"Cookie": cookie}), "the actor's log")
    assert log[0] == 200 and "counter at 1" in "".join(line["text"] for line in json.loads(log[2])["lines"])
    assert get_json(url, "/api/placement_groups", cookie) == []
    assert [j["status"] for j in get_json(url, "/api/jobs", cookie)] == ["RUNNING"]
    drivers = get_json(url, "/api/drivers", cookie)  # this driver's job, with its work counted
    assert [(d["job_id"], d["type"], d["status"], d["driver_info"]["pid"]) for d in drivers] == \
        [(anyray.get_runtime_context().get_job_id(), "DRIVER", "RUNNING", str(os.getpid()))]
    assert (drivers[0]["num_actors_alive"], drivers[0]["num_tasks_failed"]) == (1, 1)
    assert drivers[0]["num_tasks_finished"] >= 2 and drivers[0]["start_time"] <= time.time() * 1000

    status, headers, body = request(url, "GET", "/api/timeline", headers={"Cookie": cookie})
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    events = json.loads(body)
    assert {e["name"] for e in events} >= {"fails", "Counter.add"} and {e["ph"] for e in events} == {"X"}
    status, _, body = request(url, "GET", "/api/nothing", headers={"Cookie": cookie})
    assert status == 404 and b"workers/<id>/log" in body


def test_the_state_api_reads_a_dashboard_given_its_address(driver_dashboard, monkeypatch):
    ctx, token = driver_dashboard
    Counter.options(name="listed").remote()
    monkeypatch.setenv("ANYRAY_CLUSTER_TOKEN", token)
    rows = wait_for(lambda: state.list_actors(address=ctx.dashboard_url, filters=[("name", "=", "listed")]),
                    "the actor in the dashboard's rows")
    assert [(a.class_name, a.state) for a in rows] == [("Counter", "ALIVE")]
    assert len(state.list_nodes(address=ctx.dashboard_url)) == 1
    monkeypatch.setenv("ANYRAY_CLUSTER_TOKEN", "wrong")
    with pytest.raises(PermissionError, match="refused the cluster token"):
        state.list_nodes(address=ctx.dashboard_url)


def test_the_driver_token_file_is_private_and_goes_with_the_dashboard():
    ctx = anyray.init(backend="multiprocess", num_cpus=1, include_dashboard=True, dashboard_port=0)
    try:
        path = ctx.dashboard_token_file
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        anyray.shutdown()
    assert not os.path.exists(path)
    with pytest.raises(OSError):
        request(ctx.dashboard_url, "GET", "/login")


def test_dashboard_options_are_checked_at_init():
    with pytest.raises(ValueError, match="dashboard_port must be a port number"):
        anyray.init(backend="multiprocess", include_dashboard=True, dashboard_port="8265")
    with pytest.raises(TypeError, match="include_dashboard must be True, False or None"):
        anyray.init(backend="multiprocess", include_dashboard="yes")
    assert not anyray.is_initialized()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        with pytest.raises(OSError, match="dashboard cannot listen"):
            anyray.init(backend="multiprocess", include_dashboard=True, dashboard_port=taken.getsockname()[1])
    finally:
        taken.close()
    assert not anyray.is_initialized()


def _cluster_token(env) -> str:
    with open(os.path.join(env["ANYRAY_CLUSTER_DIR"], "token")) as f:
        return f.read().strip()


def test_the_head_serves_the_cluster_behind_the_cluster_token(cluster_env):
    port = free_port()
    head = start_head(cluster_env, "--num-cpus", "2", "--dashboard-port", str(port))
    url = head["dashboard_url"]
    assert url == f"http://127.0.0.1:{port}"
    assert request(url, "GET", "/api/actors")[0] == 401
    cookie = login(url, _cluster_token(cluster_env))
    program = subprocess.Popen(
        [sys.executable, "-c", "import anyray, sys\nanyray.init(backend='cluster', address='auto')\n"
         "@anyray.remote\nclass Keeper:\n    def hello(self):\n        print('kept', flush=True)\n        return 1\n"
         "@anyray.remote\ndef fails():\n    raise KeyError('on the cluster')\n"
         "k = Keeper.options(name='keeper').remote()\nanyray.get(k.hello.remote())\n"
         "try:\n    anyray.get(fails.remote())\nexcept KeyError:\n    pass\n"
         "print('ready', flush=True)\nsys.stdin.read()\n"],
        env=cluster_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert program.stdout.readline().strip() == "ready"
        nodes = get_json(url, "/api/nodes", cookie)
        assert [(n["node_id"], n["is_head_node"], n["state"]) for n in nodes] == [(head["node_id"], True, "ALIVE")]
        actors = get_json(url, "/api/actors", cookie)
        assert [(a["class_name"], a["state"], a["node_id"]) for a in actors if a["name"] == "keeper"] == \
            [("Keeper", "ALIVE", head["node_id"])]
        failed = wait_for(lambda: [t for t in get_json(url, "/api/tasks", cookie) if t["name"] == "fails"],
                          "the failed task")
        assert failed[0]["state"] == "FAILED" and "on the cluster" in failed[0]["error_message"]
        jobs = get_json(url, "/api/jobs", cookie)
        assert "RUNNING" in {j["status"] for j in jobs}
        mine = [d for d in get_json(url, "/api/drivers", cookie) if d["driver_info"]["pid"] == str(program.pid)]
        assert [(d["status"], d["type"], d["driver_node_id"], d["end_time"]) for d in mine] == \
            [("RUNNING", "DRIVER", head["node_id"], None)]
        assert (mine[0]["num_actors_alive"], mine[0]["num_tasks_failed"]) == (1, 1)
        assert mine[0]["num_tasks_finished"] >= 2 and "sys.stdin.read()" in mine[0]["entrypoint"]
        assert mine[0]["driver_info"]["node_ip_address"] == "127.0.0.1"
        keeper_pid = actors[0]["pid"]
        worker = next(w for w in get_json(url, "/api/workers", cookie) if w["pid"] == keeper_pid)
        log = get_json(url, f"/api/workers/{worker['worker_id']}/log", cookie)
        assert any(line["text"].endswith("kept\n") for line in log["lines"])  # as marked: (Keeper pid=N, ip=H)
        assert {e["name"] for e in get_json(url, "/api/timeline", cookie)} >= {"fails", "Keeper.hello"}
    finally:
        program.stdin.close()
        program.wait(timeout=WAIT)
    ended = wait_for(lambda: [d for d in get_json(url, "/api/drivers", cookie)
                              if d["job_id"] == mine[0]["job_id"] and d["status"] == "SUCCEEDED"], "the job's end")
    assert ended[0]["end_time"] >= ended[0]["start_time"]
    code, headers, body = request(url, "GET", "/metrics")  # Prometheus scrapes the head at its dashboard too
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'ray_tasks{Name="fails",State="FAILED"}' in body.decode()
    status = cli(cluster_env, "status").stdout  # the head still serves its drivers as before, and says where
    assert head["node_id"] in status and f"Dashboard: {url}" in status


def test_a_head_started_without_the_dashboard_serves_none(cluster_env):
    head = start_head(cluster_env, "--num-cpus", "1", "--include-dashboard", "false")
    assert "dashboard_url" not in head


def test_a_dashboard_port_taken_fails_the_start_with_a_clear_error(cluster_env):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        result = cli(cluster_env, "start", "--head", "--port", "0", "--ray-client-server-port", "0",
                     "--dashboard-port", str(taken.getsockname()[1]), check=False)
    finally:
        taken.close()
    assert result.returncode != 0 and "dashboard cannot listen" in result.stderr + result.stdout


def test_a_head_on_ray_default_port_held_by_another_process_starts_without_a_dashboard(cluster_env):
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8265))
        holder.listen(1)
    except OSError:  # another process holds it already: the case this test is about
        pass
    try:
        head = start_head(cluster_env, "--num-cpus", "1")
    finally:
        holder.close()
    assert "dashboard_url" not in head
    with open(os.path.join(cluster_env["ANYRAY_CLUSTER_DIR"], "logs", f"node-{head['pid']}.log")) as f:
        assert "no dashboard: the dashboard cannot listen on 127.0.0.1:8265" in f.read()


def test_the_head_shows_what_every_node_ran_and_printed(cluster_env):
    head = start_head(cluster_env, "--num-cpus", "1", "--dashboard-port", str(free_port()))
    cli(cluster_env, "start", "--address", head["address"], "--num-cpus", "1", "--resources", '{"elsewhere": 1}')
    url, cookie = head["dashboard_url"], login(head["dashboard_url"], _cluster_token(cluster_env))
    other = wait_for(lambda: [n["node_id"] for n in get_json(url, "/api/nodes", cookie)
                              if n["node_id"] != head["node_id"] and n["state"] == "ALIVE"], "the second node")[0]
    get_json(url, "/api/tasks", cookie)  # the first look: every node keeps what its workers do from now on
    second = next(r for r in files.local_nodes(cluster_env["ANYRAY_CLUSTER_DIR"]) if not r["head"])
    anyray.init(backend="cluster", address=second["address"])  # a driver of the other node: the head lists it
    job = anyray.get_runtime_context().get_job_id()
    drivers = [d for d in get_json(url, "/api/drivers", cookie) if d["job_id"] == job]
    assert [(d["status"], d["driver_node_id"], d["driver_info"]["pid"]) for d in drivers] == \
        [("RUNNING", other, str(os.getpid()))]
    listed = [j for j in state.list_jobs(detail=True) if j.job_id == job]  # the state API lists every driver's job
    assert [(j.status, j.type, j.driver_node_id) for j in listed] == [("RUNNING", "DRIVER", other)]

    @anyray.remote(resources={"elsewhere": 1})
    def away():
        print("printed on the other node", flush=True)
        return os.getpid()

    pid = anyray.get(away.remote(), timeout=WAIT)
    task = wait_for(lambda: [t for t in get_json(url, "/api/tasks", cookie) if t["name"].endswith("away")
                             and t["state"] == "FINISHED"], "the task that ran on the other node")[0]
    assert (task["node_id"], task["worker_pid"]) == (other, pid)
    worker = next(w for w in get_json(url, "/api/workers", cookie) if w["pid"] == pid)
    assert worker["node_id"] == other
    log = wait_for(lambda: request(url, "GET", f"/api/workers/{worker['worker_id']}/log",
                                   headers={"Cookie": cookie})[0] == 200 and
                   get_json(url, f"/api/workers/{worker['worker_id']}/log", cookie), "the other node's log")
    assert any(line["text"].endswith("printed on the other node\n") for line in log["lines"])
    assert pid in {e["pid"] for e in get_json(url, "/api/timeline", cookie)}
    ended = wait_for(lambda: [d for d in get_json(url, "/api/drivers", cookie) if d["job_id"] == job
                              and d["num_tasks_finished"] == 1], "the task counted in its job's row")
    assert ended[0]["num_tasks_failed"] == 0


def test_a_local_driver_serves_the_same_api():
    ctx = anyray.init(backend="local", include_dashboard=True, dashboard_port=0)
    try:
        with open(ctx.dashboard_token_file) as f:
            cookie = login(ctx.dashboard_url, f.read())
        Counter.options(name="here").remote()
        actors = wait_for(lambda: get_json(ctx.dashboard_url, "/api/actors", cookie), "the actor")
        assert [(a["class_name"], a["name"]) for a in actors] == [("Counter", "here")]
        assert get_json(ctx.dashboard_url, "/api/info", cookie)["backend"] == "local"
    finally:
        anyray.shutdown()


def test_a_head_started_with_a_redis_password_takes_the_password_at_the_login(cluster_env):
    head = start_head(cluster_env, "--num-cpus", "1", "--dashboard-port", str(free_port()),
                      "--redis-password", "dashboard-pw")
    url = head["dashboard_url"]
    cookie = login(url, "dashboard-pw")
    assert get_json(url, "/api/nodes", cookie)[0]["node_id"] == head["node_id"]
    status, headers, _ = request(url, "POST", "/login", "token=another-pw",
                                 {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 401 and "Set-Cookie" not in headers


def test_a_private_cluster_serves_its_dashboard_when_asked(cluster_env):
    ctx = anyray.init(backend="cluster", num_cpus=1, include_dashboard=True, dashboard_port=0)
    try:
        url, path = ctx.dashboard_url, ctx.dashboard_token_file
        assert url.startswith("http://127.0.0.1:") and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert request(url, "GET", "/api/nodes")[0] == 401
        with open(path) as f:
            cookie = login(url, f.read())
        assert get_json(url, "/api/info", cookie)["backend"] == "cluster"
        counter = Counter.remote()
        assert anyray.get(counter.add.remote(), timeout=WAIT) == 1
        drivers = get_json(url, "/api/drivers", cookie)
        assert [(d["job_id"], d["status"], d["driver_info"]["pid"], d["num_actors_alive"]) for d in drivers] == \
            [(anyray.get_runtime_context().get_job_id(), "RUNNING", str(os.getpid()), 1)]
    finally:
        anyray.shutdown()
    assert not os.path.exists(path)
    with pytest.raises(OSError):
        request(url, "GET", "/login")


def test_a_private_cluster_serves_no_dashboard_unless_asked(cluster_env):
    ctx = anyray.init(backend="cluster", num_cpus=1)
    try:
        assert ctx.dashboard_url is None and ctx.dashboard_token_file is None
    finally:
        anyray.shutdown()


def test_routes_added_by_other_modules_answer_behind_the_login(driver_dashboard):
    from anyray import runtime as _rt

    ctx, token = driver_dashboard
    dashboard = _rt.current_runtime().dashboard
    dashboard.add_route("POST", "/api/echo", lambda h, path: h.send_json(201, {"path": path, "got": h.read_json()}))
    dashboard.add_route("GET", "/api/jobs", lambda h, path: h.send_json(200, {"taken over": path}))
    url = ctx.dashboard_url
    body, json_type = json.dumps({"n": 1}), {"Content-Type": "application/json"}
    assert request(url, "POST", "/api/echo/x", body, json_type)[0] == 401
    cookie = login(url, token)
    status, _, answer = request(url, "POST", "/api/echo/x", body, {**json_type, "Cookie": cookie})
    assert (status, json.loads(answer)) == (201, {"path": "/api/echo/x", "got": {"n": 1}})
    assert get_json(url, "/api/jobs/", cookie) == {"taken over": "/api/jobs/"}
    status, _, answer = request(url, "DELETE", "/api/nothing", headers={"Cookie": cookie})
    assert status == 405 and b"takes DELETE" in answer
    status, _, answer = request(url, "POST", "/api/echo", "{not json", {**json_type, "Cookie": cookie})
    assert status == 400 and b"not JSON" in answer
    with pytest.raises(ValueError, match="a method GET"):
        dashboard.add_route("PATCH", "/api/x", print)
    # a program calls them with the dashboard client (the token as a bearer)
    assert call_json(url, "POST", "/api/echo", {"n": 2}, token=token.encode()) == {"path": "/api/echo", "got": {"n": 2}}
    with pytest.raises(ConnectionError, match="405 to DELETE /api/nothing"):
        call_json(url, "DELETE", "/api/nothing", token=token.encode())


def test_a_tls_cluster_serves_its_dashboard_over_https_with_the_cluster_certificate(cluster_env, monkeypatch,
                                                                                     tmp_path):
    head = start_head(cluster_env, "--tls", "--num-cpus", "1", "--dashboard-port", str(free_port()))
    url = head["dashboard_url"]
    assert url.startswith("https://127.0.0.1:")
    cluster_ca = os.path.join(cluster_env["ANYRAY_CLUSTER_DIR"], "tls", "ca.crt")
    trusting = ssl.create_default_context(cafile=cluster_ca)
    trusting.check_hostname = False  # the cluster's CA signs its members' certificates (cluster/tls.py)
    with pytest.raises(OSError):  # plain HTTP gets no answer
        request(url.replace("https://", "http://"), "GET", "/login")
    with pytest.raises(ssl.SSLCertVerificationError):  # a visitor trusting only the system's CAs refuses it
        request(url, "GET", "/login", context=ssl.create_default_context())
    assert request(url, "GET", "/api/nodes", context=trusting)[0] == 401
    cookie = login(url, _cluster_token(cluster_env), trusting)
    assert [n["node_id"] for n in get_json(url, "/api/nodes", cookie, trusting)] == [head["node_id"]]
    # the state API (the dashboard client) trusts the CA of this machine's TLS node
    monkeypatch.setenv("ANYRAY_CLUSTER_TOKEN", _cluster_token(cluster_env))
    assert [n.node_id for n in state.list_nodes(address=url)] == [head["node_id"]]
    other = tls.cluster_files(str(tmp_path / "other-ca"))  # a process holding another cluster's CA refuses it
    monkeypatch.setenv("ANYRAY_TLS_CA", other.ca)
    monkeypatch.setenv("ANYRAY_TLS_CERT", other.cert)
    monkeypatch.setenv("ANYRAY_TLS_KEY", other.key)
    with pytest.raises(ConnectionError, match="did not sign"):
        state.list_nodes(address=url)

"""Jobs on a real head (``anyray start --head``): ``anyray job submit|status|logs|stop|list|delete`` and
``anyray.job_submission.JobSubmissionClient`` against its dashboard, with real job processes.

One head serves the module's tests (starting one takes seconds on a loaded machine); each test submits its own
jobs under its own ids.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from dashboard_http import request
from servers import RedisServer
from test_cluster import ANYRAY, HEARTBEAT, WAIT

from anyray.adapters.cluster import files
from anyray.adapters.cluster.launch import kill_tree
from anyray.job_submission import JobDetails, JobStatus, JobSubmissionClient


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    directory = tmp_path_factory.mktemp("jobs") / "cluster"
    env = {k: v for k, v in os.environ.items() if k not in ("ANYRAY_CLUSTER_TOKEN", "RAY_ADDRESS", "ANYRAY_ADDRESS")}
    env.update(ANYRAY_CLUSTER_DIR=str(directory), ANYRAY_HEARTBEAT_SECONDS=str(HEARTBEAT))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANYRAY_CLUSTER_DIR", str(directory))  # this process's client finds the head's token
        for name in ("ANYRAY_CLUSTER_TOKEN", "RAY_ADDRESS", "ANYRAY_ADDRESS"):
            patch.delenv(name, raising=False)
        subprocess.run([*ANYRAY, "start", "--head", "--port", "0", "--ray-client-server-port", "0", "--num-cpus",
                        "2", "--dashboard-port", "0"], env=env, check=True, capture_output=True, timeout=WAIT)
        record = next(r for r in files.local_nodes(str(directory)) if r["head"])
        try:
            yield {"env": env, "url": record["dashboard_url"], "record": record,
                   "client": JobSubmissionClient(record["dashboard_url"])}
        finally:
            for node in files.local_nodes(str(directory)):
                kill_tree(node["pid"])


def job_cli(head, *args, timeout: float = WAIT) -> subprocess.CompletedProcess:
    return subprocess.run([*ANYRAY, "job", *args], env=head["env"], capture_output=True, text=True,
                          timeout=timeout)


def wait_status(client, submission_id: str, wanted=None, timeout: float = WAIT) -> JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(submission_id)
        if (wanted is None and status.is_terminal()) or status == wanted:
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {submission_id} is still {status}, not {wanted or 'ended'}")


def test_submit_runs_the_command_as_a_driver_of_the_cluster_in_the_uploaded_working_dir(head, tmp_path):
    (tmp_path / "helper.py").write_text("def twice(x):\n    return 2 * x\n")
    (tmp_path / "script.py").write_text(textwrap.dedent("""
        import os, anyray, helper
        anyray.init()  # RAY_ADDRESS names the head: the job joins its cluster
        @anyray.remote
        def on_a_worker(x):
            import helper  # the job's working_dir reached the task's worker too
            return helper.twice(x), os.getpid()
        value, pid = anyray.get(on_a_worker.remote(21))
        print("value", value, "worker is another process:", pid != os.getpid())
        print("nodes", len(anyray.nodes()), "cwd has", sorted(set(os.listdir(".")) - {"__pycache__"}))
    """))
    done = job_cli(head, "submit", "--submission-id", "with-dir", "--working-dir", str(tmp_path), "--",
                   "python", "script.py", timeout=2 * WAIT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Job 'with-dir' submitted successfully." in done.stdout
    assert "value 42 worker is another process: True" in done.stdout  # followed until the job ended
    assert "nodes 1 cwd has ['helper.py', 'script.py']" in done.stdout
    assert "Job 'with-dir' succeeded" in done.stdout
    status = job_cli(head, "status", "with-dir")
    assert "Status for job 'with-dir': SUCCEEDED" in status.stdout
    logs = job_cli(head, "logs", "with-dir").stdout
    assert "value 42" in logs
    listed = job_cli(head, "list").stdout
    assert any(line.startswith("with-dir ") and "SUCCEEDED" in line and "python script.py" in line
               for line in listed.splitlines()), listed


def test_the_client_submits_and_reads_jobs_with_ray_s_methods_and_fields(head):
    client = head["client"]
    submission_id = client.submit_job(entrypoint="python -c \"import os; print('said', os.environ['GREETING'])\"",
                                      runtime_env={"env_vars": {"GREETING": "hello"}}, metadata={"owner": "tests"})
    assert submission_id.startswith("raysubmit_")
    assert wait_status(client, submission_id) == JobStatus.SUCCEEDED
    assert client.get_job_logs(submission_id) == "said hello\n"
    info = client.get_job_info(submission_id)
    assert isinstance(info, JobDetails) and info.status == "SUCCEEDED" and info.driver_exit_code == 0
    assert info.metadata == {"owner": "tests"} and info.runtime_env == {"env_vars": {"GREETING": "hello"}}
    assert info.start_time <= info.end_time and info.driver_node_id == head["record"]["node_id"]
    assert submission_id in {j.submission_id for j in client.list_jobs()}
    with pytest.raises(RuntimeError, match="already exists"):
        client.submit_job(entrypoint="true", submission_id=submission_id)
    assert client.stop_job(submission_id) is False  # it had ended
    assert client.delete_job(submission_id) is True
    assert submission_id not in {j.submission_id for j in client.list_jobs()}
    with pytest.raises(RuntimeError, match="does not exist"):
        client.get_job_status(submission_id)


def test_a_failing_job_is_failed_with_its_exit_code_and_the_submit_command_says_so(head):
    done = job_cli(head, "submit", "--submission-id", "fails", "--", "python", "-c",
                   "import sys; print('going wrong'); sys.exit(3)")
    assert done.returncode == 1 and "going wrong" in done.stdout and "Job 'fails' failed" in done.stdout
    info = head["client"].get_job_info("fails")
    assert info.status == JobStatus.FAILED and info.driver_exit_code == 3
    assert "exit code 3" in info.message and "going wrong" in info.message


def test_logs_stream_while_the_job_runs(head):
    client = head["client"]
    submission_id = client.submit_job(
        entrypoint="python -c \"import time\nfor i in range(3):\n    print('line', i, flush=True); time.sleep(1)\"")

    async def tail():
        seen, states = "", []
        async for chunk in client.tail_job_logs(submission_id):
            seen += chunk
            states.append(client.get_job_status(submission_id))
        return seen, states
    seen, states = asyncio.run(asyncio.wait_for(tail(), WAIT))
    assert seen == "line 0\nline 1\nline 2\n"
    assert JobStatus.RUNNING in states  # lines came while it ran, not all at the end
    followed = subprocess.Popen([*ANYRAY, "job", "logs", "--follow", submission_id], env=head["env"],
                                stdout=subprocess.PIPE, text=True)
    assert followed.communicate(timeout=WAIT)[0] == seen and followed.returncode == 0


def test_stop_ends_every_process_of_the_job(head, tmp_path):
    pids = tmp_path / "pids"
    script = tmp_path / "spawns.py"
    script.write_text(textwrap.dedent(f"""
        import subprocess, time
        child = subprocess.Popen(["sleep", "600"])
        away = subprocess.Popen(["sleep", "601"], start_new_session=True)  # left the job's process group
        open({str(pids)!r}, "w").write(f"{{child.pid}} {{away.pid}}")
        print("children started", flush=True)
        time.sleep(600)
    """))
    client = head["client"]
    client.submit_job(entrypoint=f"{sys.executable} {script}", submission_id="spawner")
    wait_status(client, "spawner", JobStatus.RUNNING)
    deadline = time.monotonic() + WAIT
    while "children started" not in client.get_job_logs("spawner"):
        assert time.monotonic() < deadline, client.get_job_logs("spawner")
        time.sleep(0.1)
    procs = [psutil.Process(int(p)) for p in pids.read_text().split()]
    assert all(p.is_running() for p in procs)
    stopped = job_cli(head, "stop", "spawner")
    assert stopped.returncode == 0 and "Job 'spawner' is STOPPED." in stopped.stdout, stopped.stderr
    gone, alive = psutil.wait_procs(procs, timeout=WAIT)
    assert not alive, f"still running after stop: {alive}"
    info = client.get_job_info("spawner")
    assert info.status == JobStatus.STOPPED and info.message == "Job was intentionally stopped."
    assert client.stop_job("spawner") is False


def test_the_job_api_needs_the_cluster_token(head, tmp_path):
    url = head["url"]
    body = json.dumps({"entrypoint": "touch should-not-run"})
    for method, path, data in (("POST", "/api/jobs/", body), ("GET", "/api/jobs/", None),
                               ("GET", "/api/version", None), ("PUT", "/api/packages/gcs/_ray_pkg_ab.zip", "x"),
                               ("GET", "/api/jobs/any/logs/tail", None)):
        status, _headers, answer = request(url, method, path, data, {"Content-Type": "application/json"})
        assert status == 401 and b"log in" in answer, (method, path, status)
        status, _headers, _ = request(url, method, path, data, {"Authorization": "Bearer not-the-token"})
        assert status == 401
    wrong = tmp_path / "token"
    wrong.write_text("not-the-token\n")
    wrong.chmod(0o600)
    with pytest.raises(PermissionError, match="refused"):
        JobSubmissionClient(url, token_file=str(wrong))
    refused = job_cli(head, "list", "--address", url, "--token-file", str(wrong))
    assert refused.returncode == 1 and "refused" in refused.stderr
    assert "not-the-token" not in refused.stderr + refused.stdout


def test_bad_requests_are_refused_with_what_to_do(head):
    client = head["client"]
    with pytest.raises(ValueError, match="entrypoint"):
        client.submit_job(entrypoint=" ")
    with pytest.raises(RuntimeError, match="unknown field"):
        client._request("POST", "/api/jobs/", {"entrypoint": "true", "bogus": 1})
    with pytest.raises(RuntimeError, match="not a package this head holds"):
        client._request("POST", "/api/jobs/", {"entrypoint": "true", "runtime_env": {"working_dir": "/tmp"}})
    with pytest.raises(ValueError, match="not a folder"):
        client.submit_job(entrypoint="true", runtime_env={"working_dir": "/no/such/folder"})
    client.submit_job(entrypoint="sleep 600", submission_id="busy")
    with pytest.raises(RuntimeError, match="non-terminal"):
        client.delete_job("busy")
    assert client.stop_job("busy") is True
    assert wait_status(client, "busy") == JobStatus.STOPPED


def test_ray_s_own_job_submission_client_talks_to_the_head(head, tmp_path):
    """Ray's JobSubmissionClient (the `ray` package, where installed), given the token as a header: Ray's REST
    paths and fields, its working_dir upload and its tail_job_logs (a websocket) included."""
    pytest.importorskip("ray.dashboard.modules.job.sdk", reason="Ray's client needs ray[default]")
    (tmp_path / "hello.py").write_text("print('hello from', __file__.rsplit('/', 1)[-1])\n")
    with open(os.path.join(head["env"]["ANYRAY_CLUSTER_DIR"], "token")) as f:
        token = f.read().strip()
    program = textwrap.dedent(f"""
        import sys, time
        from ray.job_submission import JobSubmissionClient
        client = JobSubmissionClient({head["url"]!r}, headers={{"Authorization": "Bearer " + sys.stdin.read()}})
        sid = client.submit_job(entrypoint="python hello.py", runtime_env={{"working_dir": {str(tmp_path)!r}}})
        while not client.get_job_status(sid).is_terminal():
            time.sleep(0.1)
        print(client.get_job_status(sid), client.get_job_logs(sid).strip(), sep="|")
        print(sid in {{j.submission_id for j in client.list_jobs()}}, client.delete_job(sid), sep="|")
        import asyncio
        ticks = client.submit_job(entrypoint="python -c \\"import time\\nfor i in range(3): print(i, flush=True); "
                                             "time.sleep(0.3)\\"")
        async def tail():
            return "".join([chunk async for chunk in client.tail_job_logs(ticks)])  # Ray's websocket
        print(repr(asyncio.run(tail())), client.get_job_status(ticks), sep="|")
    """)
    env = {k: v for k, v in head["env"].items() if k != "ANYRAY_CLUSTER_DIR"}
    done = subprocess.run([sys.executable, "-c", program], input=token, env=env, capture_output=True, text=True,
                          timeout=2 * WAIT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["SUCCEEDED|hello from hello.py", "True|True", "'0\\n1\\n2\\n'|SUCCEEDED"]


def test_the_address_comes_from_ray_address_or_the_head_on_this_machine(head):
    head["client"].submit_job(entrypoint="true", submission_id="found")
    for extra, args in (({"RAY_ADDRESS": head["url"]}, ()), ({}, ()), ({}, ("--address", "auto")),
                        ({"RAY_ADDRESS": head["record"]["address"]}, ())):  # an init() address: the local head
        done = subprocess.run([*ANYRAY, "job", "list", *args], env={**head["env"], **extra}, capture_output=True,
                              text=True, timeout=WAIT)
        assert done.returncode == 0 and "found" in done.stdout, (extra, args, done.stderr)
    wrong = subprocess.run([*ANYRAY, "job", "list", "--address", "10.0.0.1:1"], env=head["env"],
                           capture_output=True, text=True, timeout=WAIT)
    assert wrong.returncode == 1 and "not a dashboard address" in wrong.stderr


def test_stopping_the_head_stops_its_running_jobs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("ANYRAY_CLUSTER_TOKEN", "RAY_ADDRESS", "ANYRAY_ADDRESS")}
    env.update(ANYRAY_CLUSTER_DIR=str(tmp_path / "cluster"), ANYRAY_HEARTBEAT_SECONDS=str(HEARTBEAT))
    subprocess.run([*ANYRAY, "start", "--head", "--port", "0", "--ray-client-server-port", "0", "--num-cpus", "1",
                    "--dashboard-port", "0"], env=env, check=True, capture_output=True, timeout=WAIT)
    record = next(r for r in files.local_nodes(env["ANYRAY_CLUSTER_DIR"]) if r["head"])
    try:
        pid_file = tmp_path / "pid"
        client = JobSubmissionClient(record["dashboard_url"], token_file=os.path.join(env["ANYRAY_CLUSTER_DIR"],
                                                                                     "token"))
        client.submit_job(entrypoint=f"{sys.executable} -c \"import os, time; open({str(pid_file)!r}, 'w')"
                                     f".write(str(os.getpid())); time.sleep(600)\"")
        deadline = time.monotonic() + WAIT
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        job = psutil.Process(int(pid_file.read_text()))
        subprocess.run([*ANYRAY, "stop"], env=env, check=True, capture_output=True, timeout=WAIT)
        gone, alive = psutil.wait_procs([job], timeout=WAIT)
        assert not alive
    finally:
        kill_tree(record["pid"])


def test_stop_sends_sigint_first_where_the_job_asks_for_it(head):
    client = head["client"]
    client.submit_job(entrypoint="python -c \"import time\ntry:\n    print('waiting', flush=True); time.sleep(600)\n"
                                 "except KeyboardInterrupt:\n    print('interrupted, cleaning up', flush=True)\"",
                      submission_id="gentle", runtime_env={"env_vars": {"RAY_JOB_STOP_SIGNAL": "SIGINT"}})
    deadline = time.monotonic() + WAIT
    while "waiting" not in client.get_job_logs("gentle"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert client.stop_job("gentle") is True
    assert wait_status(client, "gentle") == JobStatus.STOPPED
    assert client.get_job_logs("gentle") == "waiting\ninterrupted, cleaning up\n"


def test_submit_takes_a_runtime_env_file_and_headers_as_ray_s_cli(head, tmp_path):
    env_file = tmp_path / "runtime_env.yaml"
    env_file.write_text(json.dumps({"env_vars": {"FROM_FILE": "yes"}}))  # JSON is YAML too
    with open(os.path.join(head["env"]["ANYRAY_CLUSTER_DIR"], "token")) as f:
        token = f.read().strip()
    env = {k: v for k, v in head["env"].items() if k != "ANYRAY_CLUSTER_DIR"}  # no token file to find
    env["RAY_JOB_HEADERS"] = json.dumps({"Authorization": f"Bearer {token}"})
    done = subprocess.run([*ANYRAY, "job", "submit", "--address", head["url"], "--runtime-env", str(env_file), "--",
                           "python", "-c", "import os; print('from file:', os.environ['FROM_FILE'])"],
                          env=env, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0 and "from file: yes" in done.stdout, done.stdout + done.stderr
    both = job_cli(head, "submit", "--runtime-env", str(env_file), "--runtime-env-json", "{}", "--", "true")
    assert both.returncode == 1 and "give the runtime_env once" in both.stderr


def test_a_head_started_again_on_the_same_metadata_store_lists_the_jobs_of_the_one_before(tmp_path):
    server = RedisServer.start(str(tmp_path))
    env = {k: v for k, v in os.environ.items() if k not in ("ANYRAY_CLUSTER_TOKEN", "RAY_ADDRESS", "ANYRAY_ADDRESS")}
    env.update(ANYRAY_CLUSTER_DIR=str(tmp_path / "cluster"), ANYRAY_HEARTBEAT_SECONDS=str(HEARTBEAT),
               ANYRAY_REDIS_PASSWORD="jobs-survive")  # the same token for both heads: derived from it

    def start() -> dict:
        subprocess.run([*ANYRAY, "start", "--head", "--port", "0", "--ray-client-server-port", "0", "--num-cpus",
                        "1", "--dashboard-port", "0", "--metadata", server.url], env=env, check=True,
                       capture_output=True, timeout=WAIT)
        record = next(r for r in files.local_nodes(env["ANYRAY_CLUSTER_DIR"]) if r["head"])
        return record, JobSubmissionClient(record["dashboard_url"],
                                           token_file=os.path.join(env["ANYRAY_CLUSTER_DIR"], "token"))
    try:
        record, client = start()
        client.submit_job(entrypoint="echo done", submission_id="finished", metadata={"kept": "yes"})
        wait_status(client, "finished")
        client.submit_job(entrypoint="sleep 600", submission_id="cut-off")
        wait_status(client, "cut-off", JobStatus.RUNNING)
        kill_tree(record["pid"])  # the head dies without a word, and its job with it
        deadline = time.monotonic() + WAIT
        while True:  # the dead head's lease lapses before a new head may take the store
            try:
                record, client = start()
                break
            except subprocess.CalledProcessError:
                assert time.monotonic() < deadline
                time.sleep(0.5)
        jobs = {j.submission_id: j for j in client.list_jobs()}
        assert jobs["finished"].status == JobStatus.SUCCEEDED and jobs["finished"].metadata == {"kept": "yes"}
        assert jobs["cut-off"].status == JobStatus.FAILED
        assert "head that ran this job stopped" in jobs["cut-off"].message
        assert client.stop_job("cut-off") is False and client.get_job_logs("cut-off") == ""
        assert client.delete_job("finished") is True
        with pytest.raises(RuntimeError, match="already exists"):
            client.submit_job(entrypoint="true", submission_id="cut-off")
    finally:
        for node in files.local_nodes(env["ANYRAY_CLUSTER_DIR"]):
            kill_tree(node["pid"])
        server.stop()


def test_ray_job_submission_is_anyray_s_under_anyray_run(head, tmp_path):
    script = tmp_path / "submits.py"
    script.write_text(textwrap.dedent(f"""
        import time
        import anyray.job_submission
        from ray.job_submission import JobStatus, JobSubmissionClient
        assert JobSubmissionClient is anyray.job_submission.JobSubmissionClient
        client = JobSubmissionClient({head["url"]!r})
        sid = client.submit_job(entrypoint="echo via ray.job_submission")
        while not client.get_job_status(sid).is_terminal():
            time.sleep(0.1)
        print(client.get_job_status(sid) == JobStatus.SUCCEEDED, client.get_job_logs(sid).strip())
    """))
    done = subprocess.run([*ANYRAY, "run", str(script)], env=head["env"], capture_output=True, text=True,
                          timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True via ray.job_submission"


def test_a_job_s_details_name_the_driver_its_entrypoint_started(head):
    client = head["client"]
    program = ("import os, anyray; anyray.init(); "
               "print('job', anyray.get_runtime_context().get_job_id(), os.getpid(), flush=True)")
    submission_id = client.submit_job(entrypoint=f"python -c \"{program}\"")
    assert wait_status(client, submission_id) == JobStatus.SUCCEEDED
    job_id, pid = client.get_job_logs(submission_id).split("job ")[1].split()[:2]
    info = client.get_job_info(submission_id)
    assert info.job_id == job_id and info.driver_info.pid == pid  # Ray fills them once the driver connects
    assert info.driver_info.node_ip_address == "127.0.0.1"  # the head on loopback
    assert job_id in {j.job_id for j in client.list_jobs() if j.submission_id == submission_id}

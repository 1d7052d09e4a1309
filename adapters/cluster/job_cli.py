"""``anyray job submit|status|logs|stop|list|delete``: Ray's ``ray job`` commands, against a head's dashboard.

The address: ``--address`` (``http://HOST:8265``), else ``$RAY_ADDRESS``/``$ANYRAY_ADDRESS`` when an http(s)
URL, else the dashboard of the head on this machine, else ``http://127.0.0.1:8265``. The cluster token is found
as ``anyray status`` finds it (``--token-file``, ``$ANYRAY_CLUSTER_TOKEN``, this machine's token file), unless
``--headers`` (or ``$RAY_JOB_HEADERS``, as Ray's) carry an ``Authorization`` header.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time


def add_commands(sub) -> None:
    job = sub.add_parser("job", help="submit a command to the cluster's head as a job, and watch, stop or list "
                                     "jobs (Ray's `ray job`)")
    verbs = job.add_subparsers(dest="verb", required=True)

    def verb(name: str, help_text: str, with_id: bool = True):
        p = verbs.add_parser(name, help=help_text)
        p.add_argument("--address", help="the head's dashboard, http://HOST:PORT (default: $RAY_ADDRESS if a URL, "
                                         "else the head on this machine, else http://127.0.0.1:8265)")
        p.add_argument("--token-file", help="the cluster token file (default: $ANYRAY_CLUSTER_TOKEN, else this "
                                            "machine's)")
        p.add_argument("--headers", help="HTTP headers as JSON, e.g. '{\"Authorization\": \"Bearer ...\"}' "
                                         "(default $RAY_JOB_HEADERS; the token otherwise as --token-file)")
        p.add_argument("--verify", default="true", help="for an https dashboard: true (the system's CAs), false, "
                                                        "or the path of a CA bundle")
        if with_id:
            p.add_argument("job_id", metavar="JOB_ID", help="the job's submission id")
        return p

    p = verb("submit", "run a shell command as a driver on the head; follow its output until it ends "
                       "(unless --no-wait)", with_id=False)
    p.add_argument("--submission-id", help="the job's id (default: a new raysubmit_...)")
    p.add_argument("--job-id", dest="submission_id", help=argparse.SUPPRESS)
    p.add_argument("--working-dir", help="a local folder uploaded to the head; the job runs in it")
    p.add_argument("--runtime-env", metavar="FILE", help="the job's runtime_env from a YAML or JSON file")
    p.add_argument("--runtime-env-json", help="the job's runtime_env as JSON (env_vars, working_dir, excludes)")
    p.add_argument("--metadata-json", help="metadata kept with the job, a JSON object of strings")
    p.add_argument("--entrypoint-num-cpus", type=float)
    p.add_argument("--entrypoint-num-gpus", type=float)
    p.add_argument("--entrypoint-memory", type=int)
    p.add_argument("--entrypoint-resources", help="a JSON object of resource name to amount")
    p.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
    p.add_argument("entrypoint", nargs="+", help="the command, after --: anyray job submit -- python script.py")
    p.set_defaults(func=cmd_submit)
    verb("status", "the job's state and message").set_defaults(func=cmd_status)
    p = verb("logs", "what the job printed")
    p.add_argument("-f", "--follow", action="store_true", help="go on printing until the job ends")
    p.set_defaults(func=cmd_logs)
    p = verb("stop", "stop the job: SIGTERM, then SIGKILL to every process it started")
    p.add_argument("--no-wait", action="store_true", help="return without waiting for the job to end")
    p.set_defaults(func=cmd_stop)
    verb("delete", "forget an ended job and its log").set_defaults(func=cmd_delete)
    verb("list", "every job of the head", with_id=False).set_defaults(func=cmd_list)


def _fail(message) -> int:
    print(f"anyray job: {message}", file=sys.stderr)
    return 1


def _client(args):
    from anyray.job_submission import JobSubmissionClient

    headers = args.headers or os.environ.get("RAY_JOB_HEADERS")
    verify = {"true": True, "false": False}.get(args.verify.lower(), args.verify)
    return JobSubmissionClient(args.address, token_file=args.token_file, verify=verify,
                               headers=_json_arg(headers, "--headers") if headers else None)


def _json_arg(text: str | None, flag: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{flag} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {text!r}")
    return value


def _runtime_env_file(path: str) -> dict:
    with open(path) as f:
        text = f.read()
    try:
        import yaml  # a YAML file, as Ray's --runtime-env (JSON is YAML too)
    except ImportError:
        return _json_arg(text, f"--runtime-env {path} (YAML needs the pyyaml package; JSON works without)")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"--runtime-env {path} is not YAML: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--runtime-env {path} must hold a mapping (env_vars:, working_dir:, ...)")
    return value


def _run(body) -> int:
    try:
        return body()
    except (OSError, ValueError, RuntimeError, TypeError) as exc:  # ConnectionError and PermissionError too
        return _fail(exc)
    except KeyboardInterrupt:
        return 130


def cmd_submit(args) -> int:
    def body() -> int:
        if args.runtime_env and args.runtime_env_json:
            raise ValueError("give the runtime_env once: --runtime-env FILE or --runtime-env-json TEXT")
        runtime_env = _runtime_env_file(args.runtime_env) if args.runtime_env else \
            _json_arg(args.runtime_env_json, "--runtime-env-json")
        if args.working_dir:
            runtime_env["working_dir"] = args.working_dir
        argv = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
        entrypoint = argv[0] if len(argv) == 1 else " ".join(shlex.quote(a) for a in argv)
        client = _client(args)
        submission_id = client.submit_job(
            entrypoint=entrypoint, submission_id=args.submission_id, runtime_env=runtime_env,
            metadata=_json_arg(args.metadata_json, "--metadata-json"), entrypoint_num_cpus=args.entrypoint_num_cpus,
            entrypoint_num_gpus=args.entrypoint_num_gpus, entrypoint_memory=args.entrypoint_memory,
            entrypoint_resources=_json_arg(args.entrypoint_resources, "--entrypoint-resources") or None)
        print(f"Job '{submission_id}' submitted successfully.")
        if args.no_wait:
            print(f"Query its status: anyray job status {submission_id}\n"
                  f"Follow its logs:  anyray job logs --follow {submission_id}\n"
                  f"Stop it:          anyray job stop {submission_id}")
            return 0
        print(f"Tailing logs until the job exits (Ctrl-C leaves it running):\n{'-' * 40}", flush=True)
        _follow(client, submission_id)
        return _said_end(client, submission_id)
    return _run(body)


def _follow(client, submission_id: str) -> None:
    offset = 0
    while True:
        got = client.read_job_logs(submission_id, offset)
        offset = got["offset"]
        if got["logs"]:
            sys.stdout.write(got["logs"])
            sys.stdout.flush()
        elif got["ended"]:
            return
        else:
            time.sleep(0.25)


def _said_end(client, submission_id: str) -> int:
    info = client.get_job_info(submission_id)
    print(f"{'-' * 40}\nJob '{submission_id}' {str(info.status).lower()}: {info.message.splitlines()[0]}")
    return 0 if info.status == "SUCCEEDED" else 1


def cmd_status(args) -> int:
    def body() -> int:
        info = _client(args).get_job_info(args.job_id)
        print(f"Status for job '{args.job_id}': {info.status}")
        print(f"Status message: {info.message}")
        return 0
    return _run(body)


def cmd_logs(args) -> int:
    def body() -> int:
        client = _client(args)
        if args.follow:
            _follow(client, args.job_id)
        else:
            sys.stdout.write(client.get_job_logs(args.job_id))
        return 0
    return _run(body)


def cmd_stop(args) -> int:
    def body() -> int:
        client = _client(args)
        if not client.stop_job(args.job_id):
            print(f"Job '{args.job_id}' had already ended ({client.get_job_status(args.job_id)}).")
            return 0
        print(f"Stopping job '{args.job_id}'.")
        if args.no_wait:
            return 0
        while not client.get_job_status(args.job_id).is_terminal():
            time.sleep(0.25)
        print(f"Job '{args.job_id}' is {client.get_job_status(args.job_id)}.")
        return 0
    return _run(body)


def cmd_delete(args) -> int:
    def body() -> int:
        _client(args).delete_job(args.job_id)
        print(f"Job '{args.job_id}' deleted.")
        return 0
    return _run(body)


def cmd_list(args) -> int:
    def body() -> int:
        jobs = _client(args).list_jobs()
        if not jobs:
            print("No jobs.")
            return 0
        rows = [{"SUBMISSION_ID": j.submission_id, "STATUS": str(j.status), "ENTRYPOINT": j.entrypoint,
                 "STARTED": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((j.start_time or 0) / 1000))}
                for j in sorted(jobs, key=lambda j: j.start_time or 0)]
        widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
        print("  ".join(k.ljust(widths[k]) for k in widths))
        for r in rows:
            print("  ".join(r[k].ljust(widths[k]) for k in widths))
        return 0
    return _run(body)

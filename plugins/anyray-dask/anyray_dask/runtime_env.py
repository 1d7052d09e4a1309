"""The job's runtime_env on Dask: its ``env_vars`` set in every Dask worker, those that join later included
(a worker plugin). Tasks run as threads of shared worker processes, so a task or actor cannot have an
environment of its own here, nor a working_dir (one cwd per process) or py_modules (the core refuses them:
``DaskBackend.runtime_env_fields``)."""

from __future__ import annotations

import os

from distributed import WorkerPlugin

PLUGIN_NAME = "anyray-runtime-env"


class JobEnvVars(WorkerPlugin):
    """Sets the job's environment variables in each worker process as it starts (or now, if running)."""

    name = PLUGIN_NAME

    def __init__(self, env: dict):  # the job's, as the core resolved it
        self.env = env

    def setup(self, worker) -> None:
        from anyray.runtime_env_setup import set_process_env

        os.environ.update(self.env.get("env_vars") or {})
        set_process_env(self.env)  # what get_runtime_context().runtime_env shows, and tasks started here inherit


def apply_job_env(client, env: dict) -> None:
    client.register_plugin(JobEnvVars(env), name=PLUGIN_NAME)

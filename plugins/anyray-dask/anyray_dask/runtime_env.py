"""The job's runtime_env on Dask, set up in every Dask worker process (those that join later too) by a
worker plugin: env_vars, py_modules and the working_dir (unpacked once per content on the machine, on
``sys.path``, the working_dir the process's cwd), then the setup hook. The packages travel inside the
plugin (Dask sends it to each worker). Tasks run as threads of shared worker processes, so a task or actor
cannot have an environment of its own here (the core refuses one), nor pip/uv.
"""

from __future__ import annotations

from distributed import WorkerPlugin

PLUGIN_NAME = "anyray-runtime-env"


class JobEnv(WorkerPlugin):
    """Sets up the job's environment (as the core resolved it) in each worker process as it starts."""

    name = PLUGIN_NAME

    def __init__(self, env: dict, packages: dict[str, bytes]):
        self.env = env
        self.packages = packages  # object id (hex) -> the zip of a working_dir or module

    def setup(self, worker) -> None:
        from anyray.backend_kit import apply_runtime_env

        apply_runtime_env(self.env, self.packages.__getitem__)  # also what get_runtime_context().runtime_env shows


def apply_job_env(client, env: dict, fetch) -> None:
    from anyray.backend_kit import runtime_env_packages

    packages = {oid: fetch(oid) for oid in runtime_env_packages(env)}
    client.register_plugin(JobEnv(env, packages), name=PLUGIN_NAME)

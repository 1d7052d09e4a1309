"""anyray-ray: run anyray programs on Ray.

``anyray.init(backend="ray")`` starts Ray on this machine (``ray.init``), or
connects to a running cluster with ``address=...``, or attaches to the Ray
this process already runs in (a driver that called ``ray.init`` itself, or a
Ray worker running an anyray task). Tasks and actors become Ray tasks and
actors that run anyray's executor; objects are Ray objects.

This module must stay cheap to import: listing backends imports every
backend's module, so Ray is imported in :meth:`RayBackend.start` only.
"""

from __future__ import annotations

from anyray.backend_kit import Backend, Capability, hookimpl, notyet

# Set by the worker side when it attaches a runtime to the Ray it runs in (not an init keyword).
WORKER_OPTION = "_anyray_ray_worker"

# ray.init keywords passed through as given; the core validates the common ones.
_RAY_INIT_OPTIONS = frozenset({
    "include_dashboard", "dashboard_host", "dashboard_port", "logging_level", "logging_format",
    "log_to_driver", "configure_logging", "_temp_dir", "_system_config", "_metrics_export_port",
    "runtime_env", "_node_ip_address", "_plasma_directory", "_redis_password",
})


class RayBackend(Backend):
    """anyray on Ray. Owns Ray (and stops it at shutdown) only when ``start`` called ``ray.init``."""

    name = "ray"
    description = "runs on Ray: a local Ray started by init(), or a Ray cluster given by address"
    capabilities = frozenset({
        Capability.CONCURRENT, Capability.PROCESSES, Capability.ZERO_COPY, Capability.MULTI_NODE,
        Capability.WORKER_RESTART, Capability.ACTOR_RESTART, Capability.FORCE_CANCEL,
        Capability.INTERRUPT_CANCEL, Capability.ERROR_INFO, Capability.RUNTIME_ENV,
        Capability.RUNTIME_ENV_PIP,
    })
    known_gaps = {}
    known_gaps["test_semantics::test_a_task_cancelled_while_reading_its_arguments_never_runs"] = notyet(
        "Ray's cancel of a task still reading its arguments races the start of its body: on a busy machine the "
        "body sometimes runs before the interrupt lands", by_chance=True)
    accepted_options = _RAY_INIT_OPTIONS
    # runtime_env goes to Ray as given (init's to ray.init, a task's or actor's with it): Ray merges,
    # validates what is left and sets up every field it knows.
    passes_runtime_env = True

    def current_runtime_env(self) -> dict:
        """The runtime_env of the Ray worker or driver this runs in, as Ray reports it."""
        return dict(_real_ray().get_runtime_context().runtime_env)

    _owns_ray = False
    _dashboard_url = None

    def start(self) -> None:
        ray = _real_ray()

        from anyray.backend_kit import ErrorLog, WorkerEvents

        from .metadata import RayKVMetadataStore
        from .metrics import RayMetrics
        from .object_store import RayObjectStore
        from .scheduler import RayScheduler
        from .worker import Session

        cfg = self.config
        self._in_worker = bool(cfg.options.get(WORKER_OPTION))
        if ray.is_initialized():
            self._check_attachable(cfg)
        else:
            self._init_ray(ray, cfg)
        self.metadata = RayKVMetadataStore()
        self.object_store = RayObjectStore(cfg.object_store_memory)
        self.scheduler = RayScheduler(Session(cfg.job_id, cfg.namespace), self.metadata)
        self.errors = ErrorLog(self.metadata, cfg.job_id)
        self.events.add_source(self.errors.pull)
        self.task_events = WorkerEvents(self.events, self.errors)  # where tasks run here report
        self.metric_sink = RayMetrics()  # ray.util.metrics values go to Ray's own metrics

    def _check_attachable(self, cfg) -> None:
        given = [k for k in ("num_cpus", "num_gpus", "object_store_memory") if getattr(cfg, k) is not None]
        if cfg.resources:
            given.append("resources")
        if cfg.address is not None:
            given.append("address")
        if given:
            raise ValueError(f"Ray is already running in this process, so anyray attaches to it and cannot apply "
                             f"{', '.join(given)}; drop them, or call ray.shutdown() before anyray.init().")

    def _init_ray(self, ray, cfg) -> None:
        kwargs = {"namespace": cfg.namespace, "include_dashboard": False, **cfg.options}
        if cfg.address is not None:
            kwargs["address"] = cfg.address
        for key in ("num_cpus", "num_gpus", "object_store_memory"):
            if getattr(cfg, key) is not None:
                kwargs[key] = getattr(cfg, key)
        if cfg.resources:
            kwargs["resources"] = dict(cfg.resources)
        try:
            context = ray.init(**kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise type(exc)(f"Could not start the ray backend: {exc}") from exc
        self._owns_ray = True
        self._dashboard_url = getattr(context, "dashboard_url", None) or None

    def shutdown(self) -> None:
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.shutdown()
            if not self._in_worker:  # the driver's job is over: drop its error log
                try:
                    self.errors.clear()
                except ConnectionError:
                    pass
            self.metadata.close()
        if self._owns_ray:
            import ray

            self._owns_ray = False
            ray.shutdown()

    def info(self) -> dict:
        import ray

        context = ray.get_runtime_context()
        return {"address": context.gcs_address, "node_id": context.get_node_id(),
                "dashboard_url": self._dashboard_url}


def _real_ray():
    """Ray itself; refuse clearly when ``import ray`` gives anyray (the alias ``anyray run`` installs)."""
    import ray

    if ray.__name__ != "ray":
        raise RuntimeError(
            "The ray backend runs on Ray, but `import ray` gives anyray in this process (the alias that "
            "`anyray run` installs). A Ray script already runs on Ray as it is: run it with `python script.py`, "
            "or pick another backend for `anyray run`.")
    return ray


Backend = RayBackend


@hookimpl
def anyray_backends():
    return [RayBackend]


__all__ = ["RayBackend"]

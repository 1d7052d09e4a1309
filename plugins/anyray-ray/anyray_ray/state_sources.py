"""Where Ray keeps its tasks and objects, read without Ray's dashboard.

Ray's state API server (``ray[default]``'s dashboard) answers ``list_tasks`` from the GCS's task events and
``list_objects`` from every raylet's view of its core workers' reference tables, both over gRPC. Those two
services run in every Ray cluster, dashboard or not, so the plugin asks them itself, over the channels Ray's
own ``init_grpc_channel`` makes (TLS and token authentication as the cluster has them), and turns the replies
into rows with Ray's own converters (``protobuf_to_task_state_dict``, ``construct_memory_table``): the field
names and values ``ray.util.state`` gives.

Task events reach the GCS asynchronously (each worker flushes its buffer about once a second), so a task
shows up, and changes state, a moment after the fact, as in Ray.
"""

from __future__ import annotations

import threading

import ray

# Ray's own cap on what one data source returns to its state API (RAY_MAX_LIMIT_FROM_DATA_SOURCE).
MAX_ROWS = 10_000
RPC_TIMEOUT_S = 30

_channels: dict[str, object] = {}
_channels_lock = threading.Lock()


def _channel(address: str):
    """One gRPC channel per address, kept for the process (Ray's servers outlive a query)."""
    channel = _channels.get(address)
    if channel is None:
        with _channels_lock:
            channel = _channels.get(address)
            if channel is None:
                from ray._private import ray_constants
                from ray._private.grpc_utils import init_grpc_channel

                size = ray_constants.GRPC_CPP_MAX_MESSAGE_SIZE
                options = [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
                channel = _channels[address] = init_grpc_channel(address, options)
    return channel


def _unavailable(what: str, exc: Exception) -> ConnectionError:
    return ConnectionError(f"Could not read {what} from the Ray cluster ({type(exc).__name__}: {exc}); check that "
                           f"the cluster is up (`ray status`) and try again.")


def task_rows() -> list[dict]:
    """Every task attempt the GCS keeps (every job's, drivers left out), as Ray's ``TaskState`` dicts."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    from ray.util.state.common import protobuf_to_task_state_dict

    stub = gcs_service_pb2_grpc.TaskInfoGcsServiceStub(_channel(ray.get_runtime_context().gcs_address))
    request = gcs_service_pb2.GetTaskEventsRequest(
        limit=MAX_ROWS, filters=gcs_service_pb2.GetTaskEventsRequest.Filters(exclude_driver=True))
    try:
        reply = stub.GetTaskEvents(request, timeout=RPC_TIMEOUT_S)
    except grpc.RpcError as exc:
        raise _unavailable("the task events", exc) from exc
    return [protobuf_to_task_state_dict(events) for events in reply.events_by_task]


def object_rows() -> list[dict]:
    """The objects every alive node's workers reference, as Ray's ``ObjectState`` dicts."""
    import grpc
    from ray.core.generated import node_manager_pb2, node_manager_pb2_grpc
    from ray.dashboard.memory_utils import construct_memory_table
    from ray.util.state.common import protobuf_message_to_dict

    stats = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        address = f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
        stub = node_manager_pb2_grpc.NodeManagerServiceStub(_channel(address))
        try:
            reply = stub.GetObjectsInfo(node_manager_pb2.GetObjectsInfoRequest(limit=MAX_ROWS),
                                        timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise _unavailable(f"the objects of node {node['NodeID']}", exc) from exc
        stats += [protobuf_message_to_dict(s, ["object_id"], preserving_proto_field_name=False)
                  for s in reply.core_workers_stats]
    rows = []
    for entry in construct_memory_table(stats).table:  # as Ray's state API server turns them into rows
        row = entry.as_dict()
        row["object_id"] = row.pop("object_ref")
        row["ip"] = row.pop("node_ip_address")
        row["type"] = row["type"].upper()
        row["task_status"] = "NIL" if row["task_status"] == "-" else row["task_status"]
        rows.append(row)
    return rows


def job_rows() -> list[dict]:
    """Every driver's job the GCS keeps (finished ones SUCCEEDED), as Ray's ``JobState`` dicts: what Ray's
    ``list_jobs`` shows of jobs that were not submitted through its job server (which needs the dashboard)."""
    from ray.runtime_env import RuntimeEnv

    gcs = ray._private.worker.global_worker.gcs_client
    try:
        infos = gcs.get_all_job_info(skip_submission_job_info_field=True, skip_is_running_tasks_field=True,
                                     timeout=RPC_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - Ray raises its own RpcError types from its GCS client
        raise _unavailable("the job table", exc) from exc
    rows = []
    for info in sorted(infos.values(), key=lambda i: i.job_id.hex()):
        if info.config.ray_namespace.startswith("_ray_internal_"):  # Ray's own jobs: Ray leaves them out too
            continue
        job_id, metadata = info.job_id.hex(), dict(info.config.metadata)
        submission_id = metadata.get("job_submission_id")
        runtime_env = info.config.runtime_env_info.serialized_runtime_env
        rows.append({
            "job_id": job_id, "submission_id": submission_id, "entrypoint": info.entrypoint,
            "type": "SUBMISSION" if submission_id else "DRIVER", "status": "SUCCEEDED" if info.is_dead else "RUNNING",
            "message": None, "error_type": None,
            "driver_info": {"id": job_id, "node_ip_address": info.driver_address.ip_address,
                            "pid": str(info.driver_pid)},
            "start_time": info.start_time or None, "end_time": info.end_time or None, "metadata": metadata,
            "runtime_env": RuntimeEnv.deserialize(runtime_env).to_dict() if runtime_env else {},
            "driver_node_id": info.driver_address.node_id.hex() or None, "driver_exit_code": None})
    return rows


def close() -> None:
    """Close the channels (before Ray stops, so gRPC has no server going away under it to log about)."""
    with _channels_lock:
        channels = list(_channels.values())
        _channels.clear()
    for channel in channels:
        channel.close()

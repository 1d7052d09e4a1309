"""What this machine offers: CPUs, GPUs and memory, found once per process."""

from __future__ import annotations

import os


def detect_gpu_ids() -> list[int]:
    """GPU ids visible to this process: ``CUDA_VISIBLE_DEVICES`` if set, else the NVIDIA driver's list."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        return [int(v) if v.isdigit() else i for i, v in enumerate(ids)]
    try:
        return list(range(len(os.listdir("/proc/driver/nvidia/gpus"))))
    except OSError:
        return []


def node_resources(num_cpus, num_gpus, custom: dict, object_store_memory: int | None) -> tuple[dict, list[int], int]:
    """Total resources of this node, the GPU ids behind ``GPU``, and the object store's capacity."""
    gpu_ids = detect_gpu_ids()
    if num_gpus is not None:
        gpu_ids = gpu_ids[: int(num_gpus)] if len(gpu_ids) >= num_gpus else list(range(int(num_gpus)))
    memory = total_memory()
    store = int(object_store_memory) if object_store_memory else int(memory * 0.3)
    total = {
        "CPU": float(num_cpus if num_cpus is not None else (os.cpu_count() or 1)),
        "GPU": float(num_gpus if num_gpus is not None else len(gpu_ids)),
        "memory": float(int(memory * 0.7)),
        "object_store_memory": float(store),
        "node:127.0.0.1": 1.0,
        **{k: float(v) for k, v in custom.items()},
    }
    return total, gpu_ids, store


def total_memory() -> int:
    """Physical memory in bytes (sysconf where it exists: psutil's import costs more than init)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        import psutil

        return psutil.virtual_memory().total

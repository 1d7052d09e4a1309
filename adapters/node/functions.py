"""The node's function table: each function's (or actor class's) code, pickled once and sent to a worker
only the first time that worker runs it."""

from __future__ import annotations

import cloudpickle

from anyray.specs import FunctionDescriptor


class FunctionTable:
    def __init__(self):
        self._functions: dict[bytes, bytes] = {}  # function id -> pickled code, exported once

    def blob(self, descriptor: FunctionDescriptor) -> bytes:
        """The pickled code of ``descriptor``'s function."""
        blob = self._functions.get(descriptor.function_id)
        if blob is None:
            blob = self._functions[descriptor.function_id] = cloudpickle.dumps(descriptor.target, 5)
        return blob

    def descriptor(self, worker, fn_id: bytes, name: str, blob: bytes | None) -> FunctionDescriptor:
        """The function a worker's request names (``blob``: its code, the first time that worker sends it)."""
        if blob is not None:
            self._functions.setdefault(fn_id, blob)
        worker.functions.add(fn_id)
        return FunctionDescriptor(fn_id, name, None)

"""The MetadataStore port: small, durable cluster state."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator


class Watch(ABC):
    """A live subscription returned by :meth:`MetadataStore.watch`."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop delivering events; idempotent."""


class MetadataStore(ABC):
    """Keys are ``str`` paths ("actors/ns/name"), values ``bytes``.

    Every method is atomic for its key and safe to call from any thread.
    Connection failures are retried inside the adapter with backoff; only an
    outage longer than the adapter's bound (the built-in stores:
    ``RAY_gcs_rpc_server_reconnect_timeout_s``, 60 s) raises, as
    ``ConnectionError``.
    """

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or ``None``."""

    @abstractmethod
    def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Set ``key``. With ``ttl`` (seconds) the key expires unless put again before then."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it existed."""

    @abstractmethod
    def scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        """Yield every ``(key, value)`` whose key starts with ``prefix``, sorted by key."""

    @abstractmethod
    def compare_and_set(self, key: str, expected: bytes | None, value: bytes | None) -> bool:
        """Set ``key`` to ``value`` only if it now holds ``expected``.

        ``expected=None`` means "only if absent"; ``value=None`` deletes.
        Return whether the swap happened.
        """

    @abstractmethod
    def watch(self, prefix: str, callback: Callable[[str, bytes | None], None]) -> Watch:
        """Call ``callback(key, value)`` for each later change under ``prefix``.

        ``value`` is ``None`` for a delete or an expiry. Events for one key
        arrive in order, on a thread of the store's own; a slow callback
        delays later events, it never loses them.
        """

    def close(self) -> None:  # noqa: B027 - optional: stores without connections have nothing to do
        """Release connections and watch threads."""

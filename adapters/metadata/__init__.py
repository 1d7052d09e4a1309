"""MetadataStore adapters shared by the built-in backends."""

from .memory import MemoryMetadataStore


def open_metadata(url: str, namespace: str = "anyray"):
    """The MetadataStore a URL names: ``redis://[:password@]host:port[/db]`` or
    ``etcd://[user:password@]host:port[,host:port...]`` (several members of one etcd cluster)."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    try:
        if scheme in ("redis", "rediss"):
            from .redis import RedisMetadataStore

            return RedisMetadataStore(url, namespace)
        if scheme == "etcd":
            from .etcd import EtcdMetadataStore

            return EtcdMetadataStore(url, namespace)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"The {scheme} metadata store needs its client library ({exc.name} is missing): "
                                  f"pip install 'anyray[cluster]'.", name=exc.name) from exc
    shown = url.split("@")[-1]  # never echo a password
    raise ValueError(f"Unknown metadata store URL {shown!r}: use redis://host:port or etcd://host:port.")


__all__ = ["MemoryMetadataStore", "open_metadata"]

"""MetadataStore adapters shared by the built-in backends."""

from .memory import MemoryMetadataStore

__all__ = ["MemoryMetadataStore"]

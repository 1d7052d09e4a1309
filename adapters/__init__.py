"""The built-in backends, each an adapter of the core's ports."""

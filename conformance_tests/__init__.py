"""The conformance suite every anyray backend must pass."""

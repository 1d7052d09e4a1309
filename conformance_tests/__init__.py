"""The conformance suite every anyray backend must pass.

Run it against an installed backend, from anywhere::

    pytest --pyargs anyray.conformance --backend NAME [--backend-option KEY=VALUE ...]

A backend declares what it supports in ``Backend.capabilities`` (tests that
need more are skipped, saying why) and what it does not yet do right in
``Backend.known_gaps`` (those tests run as strict expected failures). The
pytest side lives in :mod:`anyray.conformance.plugin`.
"""

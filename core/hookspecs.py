"""pluggy hook specifications: what a backend plugin may implement."""

import pluggy

hookspec = pluggy.HookspecMarker("anyray")
hookimpl = pluggy.HookimplMarker("anyray")


@hookspec
def anyray_backends():
    """Return a list of the ``anyray.ports.Backend`` subclasses this plugin provides."""


@hookspec
def anyray_commands(subparsers):
    """Add subcommands to the ``anyray`` command line (``subparsers`` is argparse's); each sets ``func``."""

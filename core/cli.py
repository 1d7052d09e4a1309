"""The ``anyray`` command: ``anyray backends``, ``anyray run``, and what backend plugins add (``start``...)."""

from __future__ import annotations

import argparse
import os
import runpy
import sys


def _cmd_backends(args) -> int:
    from .plugins import list_backends

    listings = list_backends()
    if not listings:
        print("No backends installed (the 'anyray.backends' entry-point group is empty).")
        return 1
    width = max(len(item.name) for item in listings)
    for item in listings:
        if item.backend is None:
            print(f"{item.name:<{width}}  [{item.distribution}]  unavailable: {item.error}")
            continue
        caps = ", ".join(sorted(item.backend.capabilities)) or "-"
        print(f"{item.name:<{width}}  [{item.distribution}]  {item.backend.description}")
        print(f"{'':<{width}}  capabilities: {caps}")
    return 0


def _cmd_run(args) -> int:
    from .compat import install_ray_alias

    if args.backend:
        os.environ["ANYRAY_BACKEND"] = args.backend  # read by init(), in this process and its children
    if not os.path.exists(args.script):
        print(f"anyray run: no such script: {args.script}", file=sys.stderr)
        return 2
    backend = args.backend or os.environ.get("ANYRAY_BACKEND")
    if backend != "ray":
        install_ray_alias()
    # else: the script already speaks Ray's API and the ray backend is Ray itself,
    # so `import ray` must stay the real Ray (anyray's Ray plugin imports it too).
    sys.argv = [args.script, *args.args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(args.script)))
    runpy.run_path(args.script, run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anyray", description="Run Ray programs on any backend.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("backends", help="list installed backends and their capabilities")
    p.set_defaults(func=_cmd_backends)
    p = sub.add_parser("run", help="run an unmodified Ray script: `import ray` resolves to anyray")
    p.add_argument("--backend", help="backend name (default: $ANYRAY_BACKEND, else the default backend)")
    p.add_argument("script")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_run)
    from .plugins import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # a command may explain the flags it lacks (Ray's flags it does not have, by name)
        explain = getattr(args, "unknown_flags", None)
        flags = [u for u in unknown if u.startswith("-")]
        if explain is not None and flags:
            print(f"anyray {args.command}: {explain(flags)}", file=sys.stderr)
            return 2
        parser.parse_args(argv)  # argparse's own error for the rest
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""The ``gflow`` command line: a thin shell over the library.

Each subcommand lives in its own module ``gflow/_cli/_<name>.py`` exposing
``register(subparsers)``, which adds its parser and sets ``handler``. Errors a user can fix
(bad values, missing files) print one line and exit with status 2; a claim that fails a check
exits with 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from ._common import EXIT_BAD_INPUT, UsageError, one_line_parser_errors

# Order in which subcommands appear in ``gflow --help``.
_SUBCOMMANDS = ("demo", "run", "sweep", "validate", "cells", "capacity", "figures", "bench")

_EPILOG = """examples:
  gflow demo                          # embedded MNIST digits, SGD vs ODE, figures in
  ./gflow-out/demo
  gflow demo --out results/demo --quick
  gflow <subcommand> --help           # options and examples of one subcommand
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gflow",
        description="Gradient-flow dynamics of one-hidden-layer ReLU networks: mutual alignment, "
        "unlocking and racing of neurons, simulated with JAX (diffrax ODE, optax SGD).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from gflow import __version__

    parser.add_argument("--version", action="version", version=f"gflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<subcommand>")
    for name in _SUBCOMMANDS:
        module = f"gflow._cli._{name}"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).register(sub)
    one_line_parser_errors(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args.handler(args) or 0)
    except (
        UsageError,
        ValueError,
        FileNotFoundError,
        NotADirectoryError,
        PermissionError,
        IsADirectoryError,
    ) as err:
        print(f"gflow {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"gflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

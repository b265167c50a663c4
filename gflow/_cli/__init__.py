"""The ``gflow`` command line: a thin shell over the library.

Each subcommand lives in its own module ``gflow/_cli/_<name>.py`` exposing
``register(subparsers)``, which adds its parser and sets ``handler``. Errors a user can fix
(bad values, missing files, a full disk) print one line and exit with status 2; a claim that
fails a check exits with 1. SIGINT and SIGTERM end a command alike: one line, exit status
130 or 143, and a sweep keeps every finished chunk and records the interruption in its manifest.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import signal
import sys
import threading

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


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered as an interrupt so that it ends a command exactly as SIGINT does."""

    signal_name = "SIGTERM"


@contextlib.contextmanager
def _sigterm_interrupts():
    """While a command runs, SIGTERM raises `Terminated` (the previous handler comes back
    after). Signal handlers belong to the main thread; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _os_error_text(err: OSError) -> str:
    where = f"{err.filename}: " if err.filename else ""
    code = f" (errno {err.errno})" if err.errno is not None else ""
    return f"{where}{err.strerror or err}{code}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        with _sigterm_interrupts():
            return int(args.handler(args) or 0)
    except (UsageError, ValueError) as err:
        print(f"gflow {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # a missing or unreadable file, a full disk, ...
        print(f"gflow {args.command}: error: {_os_error_text(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as err:
        name = getattr(err, "signal_name", "SIGINT")
        kept = (
            "; finished chunks are kept (continue with --resume)"
            if args.command in ("run", "sweep")
            else ""
        )
        print(f"gflow {args.command}: interrupted by {name}{kept}", file=sys.stderr)
        return 128 + (signal.SIGTERM if name == "SIGTERM" else signal.SIGINT)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

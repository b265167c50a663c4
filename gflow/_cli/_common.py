"""Pieces every subcommand shares: error convention, dataset and dtype options, output folder."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    """A user-fixable problem: printed as one line, exit status 2."""


def one_line_parser_errors(parser: argparse.ArgumentParser) -> None:
    """Make argparse report errors as one line (``gflow <cmd>: error: ...``) with exit 2."""

    def error(message, _parser=parser):
        print(f"{_parser.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)

    parser.error = error
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                one_line_parser_errors(sub)


def add_dataset_options(parser: argparse.ArgumentParser, *, default: str = "mnist") -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        default=default,
        metavar="DATASET",
        help="mnist (embedded 5000 digits, default), clusters, xor, "
        "cifar:PATH (cifar-10-batches-py "
        "directory or .npz), mnist-idx:DIR, csv:PATH, npz:PATH",
    )
    group.add_argument(
        "--classes",
        default=None,
        metavar="A/B",
        help="grouping of source labels into classes, one '/'-separated group per class: "
        "0,1,2,3,4/5,6,7,8,9 (default), 3/8, or 0/1/2 for three classes",
    )
    group.add_argument(
        "--n-per-class",
        type=int,
        default=None,
        metavar="N",
        help="balanced subsample: N training samples per class",
    )
    group.add_argument(
        "--preprocess",
        default="center-unit",
        help="pixels (grayscale in [0, 1], uncentred, as in the paper) | center-unit (default) | "
        "none | center | standardize",
    )
    group.add_argument("--data-seed", type=int, default=0, help="seed of subsampling and splits")


def dataset_from_args(args: argparse.Namespace):
    """Build the `Dataset` the data options describe (`gflow.datasets.dataset_from_options`)."""
    from gflow.datasets import dataset_from_options

    return dataset_from_options(
        args.dataset,
        preprocess=args.preprocess,
        classes=args.classes,
        n_per_class=args.n_per_class,
        data_seed=args.data_seed,
    )


def add_numerics_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="floating-point precision of the simulation (default float32)",
    )


def apply_dtype(args: argparse.Namespace):
    """Enable 64-bit JAX when asked; returns the jnp dtype."""
    import jax
    import jax.numpy as jnp

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
        return jnp.float64
    return jnp.float32


def output_folder(text: str) -> str:
    """The value of ``--out``: a folder name, never empty (an empty name would write into the
    current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"must name a folder; got {text!r} (use --out . for the current directory)"
        )
    return text


def add_command(
    subparsers, name: str, handler, *, help: str, description: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    """The subcommand ``gflow NAME``: its parser (epilog printed as written), run by ``handler``."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def add_output_options(parser: argparse.ArgumentParser, *, default: str) -> None:
    parser.add_argument(
        "--out",
        type=output_folder,
        default=default,
        metavar="DIR",
        help=f"output folder (default {default})",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the final summary")


def prepare_output_dir(path: str) -> Path:
    """Create the output folder (and parents); fail with one clear line if it is not writable."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {path} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output folder {path}: {err.strerror}") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"output folder {path} is not writable")
    return out


def positive(name: str, value, kind=float):
    if value is None or not value > 0:
        raise UsageError(f"{name} must be > 0; got {value}")
    return kind(value)

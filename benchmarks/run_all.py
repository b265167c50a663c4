"""Every section of gflow bench: sweep speed, sweep memory, stable cells, ODE cost (the order they
run in).

    python benchmarks/run_all.py --json benchmarks/results/run_all.json [--quick] [--threads N]
        [--dataset cifar:PATH] [--set NAME=VALUE ...]

Options: `_common` (the same sizes and report as ``gflow bench``; the method in README.md).
"""

import sys

from _common import main

SECTIONS = ("sweep", "memory", "cells", "ode")


def run(argv=None) -> int:
    """Run this benchmark with the options ``argv`` (default: the command line)."""
    return main(SECTIONS, (__doc__ or "").split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(run())

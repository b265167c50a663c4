"""Seed-sweep speed: gflow's chunked SGD (shared and per-seed batch orders, both bases) against a
NumPy loop and the PyTorch loop a researcher writes, S in {1, 8, 32, 128} seeds of the paper's
workload (d = 300, D = 1024, N = 800, B = 4, beta = 0.9).

    python benchmarks/sweep_speed.py --json benchmarks/results/sweep_speed.json
        [--quick] [--threads N] [--dataset cifar:PATH] [--set NAME=VALUE ...]

Options: `_common` (the same sizes and report as ``gflow bench``; the method in README.md).
"""

import sys

from _common import main

SECTIONS = ("sweep",)


def run(argv=None) -> int:
    """Run this benchmark with the options ``argv`` (default: the command line)."""
    return main(SECTIONS, (__doc__ or "").split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(run())

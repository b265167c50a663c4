"""Peak RSS of a 1024-seed sweep in groups of 128 with the per-neuron norms streamed to .npy files,
measured in a fresh subprocess (VmHWM).

    python benchmarks/sweep_memory.py --json benchmarks/results/sweep_memory.json
        [--quick] [--threads N] [--dataset cifar:PATH] [--set NAME=VALUE ...]

Options: `_common` (the same sizes and report as ``gflow bench``; the method in README.md).
"""

import sys

from _common import main

SECTIONS = ("memory",)


def run(argv=None) -> int:
    """Run this benchmark with the options ``argv`` (default: the command line)."""
    return main(SECTIONS, (__doc__ or "").split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(run())

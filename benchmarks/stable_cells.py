"""Algorithm 1 (the number of stable cells, docs/theory.md §3) with M = 100 000 probes on N = 4000
samples: the first call with its compilation, then the median of the timed calls.

    python benchmarks/stable_cells.py --json benchmarks/results/stable_cells.json
        [--quick] [--threads N] [--dataset cifar:PATH] [--set NAME=VALUE ...]

Options: `_common` (the same sizes and report as ``gflow bench``; the method in README.md).
"""

import sys

from _common import main

SECTIONS = ("cells",)


def run(argv=None) -> int:
    """Run this benchmark with the options ``argv`` (default: the command line)."""
    return main(SECTIONS, (__doc__ or "").split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(run())

"""Algorithm 1 (stable-cell count) with M = 100 000 probes on N = 4000 samples.

Usage: python benchmarks/stable_cells.py --json benchmarks/results/stable_cells.json [--quick] [--threads N]
       [--dataset cifar:PATH] [any other `gflow bench` option]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _runner import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(["--only", "cells"]))

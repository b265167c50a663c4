"""Every section of `gflow bench`: sweep speed, ODE cost, stable cells, sweep memory.

Usage: python benchmarks/run_all.py --json benchmarks/results/run_all.json [--quick] [--threads N]
       [--dataset cifar:PATH] [any other `gflow bench` option]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _runner import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run([]))

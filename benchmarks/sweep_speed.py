"""Seed-sweep speed: gflow's chunked SGD against NumPy and PyTorch loops, S in {1, 8, 32, 128}.

Usage: python benchmarks/sweep_speed.py --json benchmarks/results/sweep_speed.json [--quick] [--threads N]
       [--dataset cifar:PATH] [any other `gflow bench` option]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _runner import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(["--only", "sweep"]))

"""The diffrax gradient flow through the loss drop (float32, float64) against SGD over the same flow time.

Usage: python benchmarks/ode_cost.py --json benchmarks/results/ode_cost.json [--quick] [--threads N]
       [--dataset cifar:PATH] [any other `gflow bench` option]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _runner import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(["--only", "ode"]))

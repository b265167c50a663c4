"""Peak RSS of a 1024-seed sweep with per-neuron norms streamed to disk (measured in a subprocess).

Usage: python benchmarks/sweep_memory.py --json benchmarks/results/sweep_memory.json [--quick] [--threads N]
       [--dataset cifar:PATH] [any other `gflow bench` option]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _runner import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(["--only", "memory"]))

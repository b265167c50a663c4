"""The gradient flow through the loss drop (float32 and float64; gauss1 by default, or --set
ode_solver=heun --set ode_dt=0.125, ...) against SGD over the same flow time, and the float64
solve against full-batch GD at equal trajectory error: GD at eta, eta/2, eta/4, their Richardson
reference and its first-order window, gate margins and chatter, perturbed starts (docs/theory.md
§1, §8.1).

    python benchmarks/ode_cost.py --json benchmarks/results/ode_cost.json [--quick] [--threads N]
        [--dataset cifar:PATH] [--set NAME=VALUE ...]

Options: `_common` (the same sizes and report as ``gflow bench``; the method in README.md).
"""

import sys

from _common import main

SECTIONS = ("ode",)


def run(argv=None) -> int:
    """Run this benchmark with the options ``argv`` (default: the command line)."""
    return main(SECTIONS, (__doc__ or "").split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(run())

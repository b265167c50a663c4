"""``gflow demo``: the main job on the embedded MNIST digits."""

from __future__ import annotations

import argparse

from ..runs import DemoConfig
from ..solvers import FlowConfig
from ._common import (
    add_command,
    add_dataset_options,
    add_numerics_options,
    add_output_options,
    apply_dtype,
    dataset_from_args,
    prepare_output_dir,
)

_EPILOG = """examples:
  gflow demo                                  # 1000 MNIST digits (0-4 vs 5-9), d=50, σ=1e-5
  gflow demo --quick --out /tmp/demo          # smaller: 400 digits, d=30
  gflow demo --classes 3/8 --width 100        # digit 3 vs digit 8
  gflow demo --dataset cifar:cifar-10-batches-py --n-per-class 400

It trains one network from a tiny initialisation twice, by the gradient flow (the sliding-mode
integrator of the nonsmooth flow, docs/theory.md §8) and by SGD with momentum (optax), prints
the loss-drop time, the balance drift and how many neurons won the race, and writes figures
(norms and cos δ vs time, ODE vs SGD overlay, final P_i vs early cos δ_i). Each long step
shows its elapsed time on stderr (--quiet: only the summary).
"""


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "demo",
        main,
        help="train on the embedded MNIST digits by ODE and SGD; summary and figures",
        description="Silent alignment, unlocking and the race on real digits, ODE against SGD.",
        epilog=_EPILOG,
    )
    p.add_argument("--quick", action="store_true", help="smaller problem (under a minute)")
    p.add_argument(
        "--width", type=int, default=None, help="hidden neurons d (default 50; quick 30)"
    )
    p.add_argument("--sigma", type=float, default=1e-5, help="init scale σ (default 1e-5)")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate η (default 0.01)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum β (default 0.9)")
    p.add_argument("--batch", type=int, default=4, help="SGD batch size B (default 4)")
    p.add_argument(
        "--t-end",
        type=float,
        default=None,
        help="flow time to simulate (default: 1.75 × the estimated loss-drop time)",
    )
    p.add_argument(
        "--ode-solver",
        choices=("sliding", "tsit5"),
        default="sliding",
        help="ODE solver: the sliding-mode integrator of the nonsmooth flow (default; constant "
        "steps --ode-step) or adaptive Tsit5 (--rtol)",
    )
    p.add_argument(
        "--ode-step",
        type=float,
        default=DemoConfig.ode_step,
        help=f"largest step h of the sliding solver (default {DemoConfig.ode_step:g})",
    )
    p.add_argument(
        "--rtol",
        type=float,
        default=FlowConfig.rtol,
        help=f"Tsit5's relative tolerance (default {FlowConfig.rtol:g}, as gflow's everywhere)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and batch order")
    add_dataset_options(p)
    add_numerics_options(p)
    add_output_options(p, default="gflow-out/demo")


def main(args: argparse.Namespace) -> int:
    from gflow.runs import format_summary, run_demo

    if args.n_per_class is None and args.dataset == "mnist":
        args.n_per_class = 200 if args.quick else 500
    config = DemoConfig(
        width=args.width if args.width is not None else (30 if args.quick else 50),
        sigma=args.sigma,
        learning_rate=args.lr,
        momentum=args.momentum,
        batch_size=args.batch,
        t_end=args.t_end,
        rtol=args.rtol,
        seed=args.seed,
        ode_solver=args.ode_solver,
        ode_step=args.ode_step,
    )
    dtype = apply_dtype(args)
    dataset = dataset_from_args(args)
    dataset.require_binary("gflow demo")
    out = prepare_output_dir(args.out)
    log = (lambda *_: None) if args.quiet else print
    summary = run_demo(dataset, config, out, dtype=dtype, log=log, progress=not args.quiet)
    print(format_summary(summary))
    print(f"figures and summary.json in {out}")
    return 0

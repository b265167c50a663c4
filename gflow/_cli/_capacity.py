"""``gflow capacity``: effective capacity of one trained network (docs/theory.md §6).

Trains one configuration with mini-batch SGD, or takes the final weights of one run of a run
or sweep folder (``--run DIR --point P --seed S``), or loads them from an npz holding
``W [d, D]``, ``b [d]``, ``V [d, 2]``; then reports the clusters of mutually aligned neurons at
threshold τ, the accuracy of the merged network with its logit-change bound, and accuracy
against the fraction of neurons removed by norm pruning.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from ._common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    UsageError,
    add_command,
    add_dataset_options,
    add_numerics_options,
    apply_dtype,
    dataset_from_args,
    positive,
)

_EPILOG = """examples:
  gflow capacity                                  # embedded MNIST, d=300, σ=1e-5, SGD B=4, β=0.9
  gflow capacity --dataset cifar:cifar-10-batches-py --n-per-class 400 --t-end 800
  gflow capacity --run gflow-out/sweep --point 1 --seed 3   # one run of a sweep folder
  gflow capacity --params final.npz --tau 0.9 --json

--run takes the run's own data (rebuilt from its configuration and checked against the
fingerprint in its manifest) and dtype; the data and training options are then ignored.
"""

_DEFAULT_T_END = 800.0


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "capacity",
        run,
        help="clusters of aligned neurons, merged accuracy and norm pruning of one network",
        description="Train one network (or take one run of a run or sweep folder, or load W, b, V "
        "from an npz) and report its effective capacity: clusters at cosine threshold tau "
        "(complete linkage on (w, b) within each output alignment), accuracy after merging each "
        "cluster into one neuron with a bound on the logit change, and accuracy after removing "
        "the neurons of smallest P_i = |w_i||v_i|.",
        epilog=_EPILOG,
    )
    add_dataset_options(p)
    add_numerics_options(p)
    net = p.add_argument_group("network and training (the words of gflow run; not with --run)")
    net.add_argument(
        "--width", type=int, default=300, help="hidden neurons d (default 300, the paper's)"
    )
    net.add_argument("--sigma", type=float, default=1e-5, help="init scale σ (default 1e-5)")
    net.add_argument(
        "--lr",
        "--learning-rate",
        dest="lr",
        type=float,
        default=0.01,
        help="SGD learning rate η (default 0.01: 0.1 flow time per step with momentum 0.9)",
    )
    net.add_argument("--momentum", type=float, default=0.9, help="momentum β (default 0.9)")
    net.add_argument(
        "--batch",
        "--batch-size",
        dest="batch",
        type=int,
        default=4,
        help="mini-batch B (default 4)",
    )
    length = net.add_mutually_exclusive_group()
    length.add_argument(
        "--t-end",
        "--time",
        dest="t_end",
        type=float,
        default=None,
        help=f"flow time t = kη/(1−β) to train for (default {_DEFAULT_T_END:g})",
    )
    length.add_argument(
        "--steps", type=int, default=None, help="optimiser steps k instead of --t-end"
    )
    net.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of initialisation and batch order (default 0); with --run, which of the "
        "run's seeds (default its first)",
    )
    source = p.add_argument_group("a network from a file")
    source.add_argument(
        "--run",
        default=None,
        metavar="DIR",
        help="a run or sweep folder (gflow run / gflow sweep): take the final weights of one run",
    )
    source.add_argument(
        "--point",
        type=int,
        default=None,
        help="with --run: index of the hyper-parameter point (default 0; listed in report.md)",
    )
    source.add_argument(
        "--params",
        default=None,
        metavar="NPZ",
        help="load final W [d, D], b [d], V [d, 2] from this npz instead of training",
    )
    cap = p.add_argument_group("capacity")
    cap.add_argument(
        "--tau", type=float, default=0.95, help="cosine threshold of a cluster (default 0.95)"
    )
    cap.add_argument(
        "--rebalance", action="store_true", help="rebalance merged neurons to |w~| = |v|"
    )
    cap.add_argument(
        "--weighting",
        choices=("norm", "contribution"),
        default="norm",
        help="merged direction: norm = normalised sum of (w_j, b_j) (default, docs/theory.md §6); "
        "contribution = sum of |w~_j||v_j| unit vectors / sum of weights, which cancels the "
        "first-order error of the merge",
    )
    cap.add_argument(
        "--fractions",
        default="0,0.25,0.5,0.75,0.9,0.95",
        help="fractions of neurons removed by norm pruning (comma separated)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(
            f"--fractions must be comma-separated numbers in [0, 1]; got {text!r}"
        ) from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise UsageError(f"--fractions must be comma-separated numbers in [0, 1]; got {text!r}")
    return values


def _train(args, data, dim: int, dtype):
    import jax

    from gflow.network import init_params
    from gflow.runs import steps_to_flow_time
    from gflow.trainers import SGDConfig, train_sgd

    positive("--lr", args.lr)
    if not 0 <= args.momentum < 1:
        raise UsageError(f"--momentum must be in [0, 1); got {args.momentum}")
    if args.steps is not None:
        steps = int(positive("--steps", args.steps, int))
    else:
        t_end = positive("--t-end", _DEFAULT_T_END if args.t_end is None else args.t_end)
        steps = steps_to_flow_time(t_end, args.lr, args.momentum, 1)
    key = jax.random.key(0 if args.seed is None else args.seed)
    k_init, k_batch = jax.random.split(key)
    params0 = init_params(
        k_init,
        int(positive("--width", args.width, int)),
        dim,
        positive("--sigma", args.sigma),
        dtype=dtype,
    )
    config = SGDConfig(
        steps=steps, record_every=steps, batch_size=int(positive("--batch", args.batch, int))
    )
    traj = train_sgd(
        params0,
        k_batch,
        data,
        learning_rate=args.lr,
        momentum=args.momentum,
        config=config,
    )
    return traj.final_params, {"steps": steps, "flow_time": float(traj.t[-1])}


def _pct(v) -> str:
    return "   n/a" if v is None else f"{100 * v:6.2f}"


def _source(report: dict) -> str:
    if "training" in report:
        tr = report["training"]
        return (
            f"trained {tr['steps']} steps (flow time {tr['flow_time']:.1f}) in "
            f"{tr['seconds']:.1f} s"
        )
    if "from_run" in report:
        r = report["from_run"]
        return (
            f"run {r['run']}, point {r['point']} ({r['setting']}), seed {r['seed']} "
            f"({r['trainer']} to flow time {r['flow_time']:.4g})"
        )
    return f"loaded from {report['params']}"


def format_report(report: dict) -> str:
    m = report["merge"]
    lines = [
        f"dataset      {report['dataset']}",
        f"network      d = {m['width']}, {_source(report)}",
        f"clusters     {m['clusters']} at tau = {m['threshold']:g} (complete linkage; "
        f"width / clusters = {m['width'] / m['clusters']:.2f}; merged direction: "
        f"{m['weighting']})",
        "",
        "               before   merged",
        f"train acc %   {_pct(m['train_accuracy'])}   {_pct(m['train_accuracy_merged'])}",
        f"test acc %    {_pct(m['test_accuracy'])}   {_pct(m['test_accuracy_merged'])}",
        f"max |o_merged - o| = {m['max_logit_change']:.3g}  <=  bound {m['max_bound']:.3g}  "
        f"({'holds' if m['bound_holds'] else 'VIOLATED'}; max |o| = {m['logit_scale']:.3g}, "
        f"max member-to-centre gap {m['max_angle_gap']:.3g} <= sqrt(2(1-tau)) = "
        f"{math.sqrt(2 * (1 - m['threshold'])):.3g})",
        "",
        "norm pruning (smallest P_i removed)",
        "  fraction  kept  train acc %  test acc %",
    ]
    for row in report["norm_pruning"]:
        lines.append(
            f"  {row['fraction']:8.2f}  {row['neurons_kept']:4d}     "
            f"{_pct(row['train_accuracy'])}     {_pct(row['test_accuracy'])}"
        )
    return "\n".join(lines)


def run(args) -> int:
    fractions = _fractions(args.fractions)
    if not -1 <= args.tau <= 1:
        raise UsageError(f"--tau must be a cosine similarity in [-1, 1]; got {args.tau}")
    if args.run is not None and args.params is not None:
        raise UsageError("give --run or --params, not both")
    if args.point is not None and args.run is None:
        raise UsageError("--point selects a run of a folder: give --run DIR too")
    from gflow import training_data
    from gflow.capacity import capacity_report, load_network_npz

    if args.run is not None:
        from gflow.runs import load_run, run_network

        try:
            apply_dtype(argparse.Namespace(dtype=load_run(args.run).config["dtype"]))
            params, data, dataset, record = run_network(args.run, args.point, args.seed)
        except ValueError as err:  # not a run folder, no such point or seed, a failed run
            raise UsageError(f"--run {args.run}: {err}") from None
        report: dict = {"dataset": dataset.describe(), "from_run": record}
    else:
        dtype = apply_dtype(args)
        dataset = dataset_from_args(args)
        data = training_data(dataset, dtype)
        report = {"dataset": dataset.describe()}
        if args.params is not None:
            params = load_network_npz(args.params, dataset.dim, dtype)
            report["params"] = str(args.params)
        else:
            start = time.perf_counter()
            params, training = _train(args, data, dataset.dim, dtype)
            training["seconds"] = time.perf_counter() - start
            training.update(
                width=args.width,
                sigma=args.sigma,
                lr=args.lr,
                momentum=args.momentum,
                batch=args.batch,
                seed=0 if args.seed is None else args.seed,
            )
            report["training"] = training
    report.update(
        capacity_report(
            params,
            data,
            tau=args.tau,
            rebalance=args.rebalance,
            fractions=fractions,
            weighting=args.weighting,
        )
    )
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    return EXIT_OK if report["merge"]["bound_holds"] else EXIT_CHECK_FAILED

"""``gflow capacity``: effective capacity of one trained network (docs/theory.md §6).

Trains one configuration with mini-batch SGD (or loads final parameters from an npz holding
``W [d, D]``, ``b [d]``, ``V [d, 2]``), then reports the clusters of mutually aligned neurons at
threshold τ, the accuracy of the merged network with its logit-change bound, and accuracy
against the fraction of neurons removed by norm pruning.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from ._common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    UsageError,
    add_dataset_options,
    add_numerics_options,
    apply_dtype,
    dataset_from_args,
    positive,
)

_EPILOG = """examples:
  gflow capacity                                  # embedded MNIST, d=300, sigma=1e-5, SGD B=4, beta=0.9
  gflow capacity --dataset cifar:cifar-10-batches-py --n-per-class 400 --time 800
  gflow capacity --params final.npz --tau 0.9 --json
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "capacity",
        help="clusters of aligned neurons, merged accuracy and norm pruning of one network",
        description="Train one network (or load W, b, V from an npz) and report its effective capacity: "
        "clusters at cosine threshold tau (complete linkage on (w, b) within each output alignment), "
        "accuracy after merging each cluster into one neuron with a bound on the logit change, and "
        "accuracy after removing the neurons of smallest P_i = |w_i||v_i|.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_options(p)
    add_numerics_options(p)
    net = p.add_argument_group("network and training (ignored with --params)")
    net.add_argument(
        "--width", type=int, default=300, help="hidden neurons d (default 300, the paper's)"
    )
    net.add_argument("--sigma", type=float, default=1e-5, help="init scale sigma (default 1e-5)")
    net.add_argument(
        "--learning-rate",
        type=float,
        default=0.01,
        help="SGD step eta (default 0.01: 0.1 flow time per step with momentum 0.9)",
    )
    net.add_argument("--momentum", type=float, default=0.9, help="momentum beta (default 0.9)")
    net.add_argument("--batch-size", type=int, default=4, help="mini-batch B (default 4)")
    net.add_argument(
        "--time",
        type=float,
        default=800.0,
        help="flow time t = k*eta/(1-beta) to train for (default 800)",
    )
    net.add_argument("--seed", type=int, default=0, help="seed of initialisation and batch order")
    net.add_argument(
        "--params",
        default=None,
        metavar="NPZ",
        help="load final W, b, V from this npz instead of training",
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
    p.set_defaults(handler=run)


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


def load_params_npz(path, dim: int, dtype):
    """`Params` from an npz with arrays ``W [d, D]``, ``b [d]``, ``V [d, 2]``."""
    import jax.numpy as jnp
    import numpy as np

    from gflow._network import Params

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--params {path}: file not found")
    with np.load(p) as z:
        missing = [k for k in ("W", "b", "V") if k not in z.files]
        if missing:
            raise UsageError(
                f"--params {path}: missing arrays {missing} (need W [d, D], b [d], V [d, 2]); has {z.files}"
            )
        W, b, V = (np.asarray(z[k]) for k in ("W", "b", "V"))
    if W.ndim != 2 or b.shape != (W.shape[0],) or V.shape != (W.shape[0], 2):
        raise UsageError(
            f"--params {path}: shapes W {W.shape}, b {b.shape}, V {V.shape} do not form a network "
            "(need W [d, D], b [d], V [d, 2])"
        )
    if W.shape[1] != dim:
        raise UsageError(
            f"--params {path}: W has {W.shape[1]} inputs but the dataset has D = {dim}"
        )
    return Params(W=jnp.asarray(W, dtype), b=jnp.asarray(b, dtype), V=jnp.asarray(V, dtype))


def _train(args, data, dim: int, dtype):
    import jax

    from gflow._network import init_params
    from gflow._sgd import SGDConfig, train_sgd

    positive("--learning-rate", args.learning_rate)
    positive("--time", args.time)
    if not 0 <= args.momentum < 1:
        raise UsageError(f"--momentum must be in [0, 1); got {args.momentum}")
    steps = max(1, int(round(args.time * (1 - args.momentum) / args.learning_rate)))
    key = jax.random.key(args.seed)
    k_init, k_batch = jax.random.split(key)
    params0 = init_params(
        k_init,
        positive("--width", args.width, int),
        dim,
        positive("--sigma", args.sigma),
        dtype=dtype,
    )
    config = SGDConfig(steps=steps, record_every=steps, batch_size=args.batch_size)
    traj = train_sgd(
        params0,
        k_batch,
        data,
        learning_rate=args.learning_rate,
        momentum=args.momentum,
        config=config,
    )
    return traj.final_params, {"steps": steps, "flow_time": float(traj.t[-1])}


def build_report(
    params, data, *, tau: float, rebalance: bool, fractions, weighting: str = "norm"
) -> dict:
    """The numbers `gflow capacity` prints: merging at τ and the norm-pruning curve."""
    from gflow._capacity import merge_report, norm_pruning_curve

    m = merge_report(params, data, threshold=tau, rebalance=rebalance, weighting=weighting)
    curve = norm_pruning_curve(params, data, fractions)
    return {
        "merge": {
            k: (v if not isinstance(v, float) or math.isfinite(v) else None)
            for k, v in m._asdict().items()
        },
        "norm_pruning": [
            {
                "fraction": float(f),
                "neurons_kept": int(k),
                "train_accuracy": float(a),
                "test_accuracy": float(t) if math.isfinite(t) else None,
            }
            for f, k, a, t in zip(
                curve.fraction, curve.neurons_kept, curve.train_accuracy, curve.test_accuracy
            )
        ],
    }


def _pct(v) -> str:
    return "   n/a" if v is None else f"{100 * v:6.2f}"


def format_report(report: dict) -> str:
    m = report["merge"]
    lines = [
        f"dataset      {report['dataset']}",
        f"network      d = {m['width']}"
        + (
            f", trained {report['training']['steps']} steps (flow time "
            f"{report['training']['flow_time']:.1f}) in {report['training']['seconds']:.1f} s"
            if "training" in report
            else f", loaded from {report['params']}"
        ),
        f"clusters     {m['clusters']} at tau = {m['threshold']:g} (complete linkage; width / clusters = "
        f"{m['width'] / m['clusters']:.2f}; merged direction: {m['weighting']})",
        "",
        "               before   merged",
        f"train acc %   {_pct(m['train_accuracy'])}   {_pct(m['train_accuracy_merged'])}",
        f"test acc %    {_pct(m['test_accuracy'])}   {_pct(m['test_accuracy_merged'])}",
        f"max |o_merged - o| = {m['max_logit_change']:.3g}  <=  bound {m['max_bound']:.3g}  "
        f"({'holds' if m['bound_holds'] else 'VIOLATED'}; max |o| = {m['logit_scale']:.3g}, "
        f"max member-to-centre gap {m['max_angle_gap']:.3g} <= sqrt(2(1-tau)) = {math.sqrt(2 * (1 - m['threshold'])):.3g})",
        "",
        "norm pruning (smallest P_i removed)",
        "  fraction  kept  train acc %  test acc %",
    ]
    for row in report["norm_pruning"]:
        lines.append(
            f"  {row['fraction']:8.2f}  {row['neurons_kept']:4d}     {_pct(row['train_accuracy'])}     "
            f"{_pct(row['test_accuracy'])}"
        )
    return "\n".join(lines)


def run(args) -> int:
    dtype = apply_dtype(args)
    fractions = _fractions(args.fractions)
    if not -1 <= args.tau <= 1:
        raise UsageError(f"--tau must be a cosine similarity in [-1, 1]; got {args.tau}")
    from gflow._observables import training_data

    dataset = dataset_from_args(args)
    data = training_data(dataset, dtype)
    report: dict = {"dataset": dataset.describe()}
    if args.params is not None:
        params = load_params_npz(args.params, dataset.dim, dtype)
        report["params"] = str(args.params)
    else:
        start = time.perf_counter()
        params, training = _train(args, data, dataset.dim, dtype)
        training["seconds"] = time.perf_counter() - start
        training.update(
            width=args.width,
            sigma=args.sigma,
            learning_rate=args.learning_rate,
            momentum=args.momentum,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        report["training"] = training
    report.update(
        build_report(
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

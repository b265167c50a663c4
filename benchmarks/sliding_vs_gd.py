"""The sliding solver against GD on the CIFAR task up to a time t (docs/theory.md §8.1): wall
time, gradients and the error of P_i against a finer sliding run written by
``benchmarks/sliding_flow.py`` (its ``…-h{h}.npz``), for one step h and one learning rate η.

Float64, N = 800, d = 300, σ = 1e-5, the start of ``sliding_flow.py`` (key 3); the error at each
save time is ``max_i |P_i − P_i^ref| / max_t P_i^ref``. Each run's time includes its compilation
(one call each: a call is minutes). Writes ``--json``.

    python benchmarks/sliding_vs_gd.py --dataset cifar:PATH \
        [--reference benchmarks/results/sliding-cifar-h0.0625.npz] [--saves 20] [--h 0.125]
        [--eta 0.025] [--capacity 16] [--runs sliding,gd]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from sliding_flow import CIFAR_SAMPLES, cifar_start, gd_grid  # noqa: E402

import gflow  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _errors(P: np.ndarray, ref: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.max(np.abs(P - ref) / scale, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="cifar:PATH")
    parser.add_argument("--reference", type=Path, default=RESULTS / "sliding-cifar-h0.0625.npz")
    parser.add_argument("--saves", type=int, default=20, help="the reference's first save times")
    parser.add_argument("--h", type=float, default=0.125)
    parser.add_argument("--eta", type=float, default=0.025, help="rounded so records land on t")
    parser.add_argument("--capacity", type=int, default=16)
    parser.add_argument("--runs", default="sliding,gd", help="which of sliding, gd to run")
    parser.add_argument("--json", type=Path, default=RESULTS / "sliding-vs-gd.json")
    args = parser.parse_args()
    ds = gflow.load_dataset(args.dataset, n_per_class=CIFAR_SAMPLES // 2)
    data = gflow.training_data(ds, jnp.float64)
    p0 = cifar_start(ds.dim)
    with np.load(args.reference) as f:
        t_ref, P_ref = f["t"][: args.saves], f["P"]
    scale = np.max(P_ref, axis=0)
    P_ref = P_ref[: args.saves]
    out: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.machine(),
        "backend": jax.default_backend(),
        "reference": args.reference.name,
        "t": t_ref.tolist(),
    }

    runs = args.runs.split(",")
    if "sliding" in runs:
        cfg = gflow.FlowConfig(
            solver="sliding", adaptive=False, dt0=args.h, sliding_capacity=args.capacity
        )
        start = time.perf_counter()
        traj, stats = gflow.gradient_flow(p0, data, t_ref, config=cfg, return_stats=True)
        P = np.asarray(jax.block_until_ready(traj.observables.P))
        err = _errors(P, P_ref, scale)
        out["sliding"] = {
            "h": args.h,
            "capacity": args.capacity,
            "seconds": time.perf_counter() - start,
            "steps": int(stats.num_steps),
            "gradients": int(stats.evaluations),
            "error": err.tolist(),
        }
        print("sliding", {k: v for k, v in out["sliding"].items() if k != "error"}, err.max())
    if "gd" in runs:
        per, steps, eta = gd_grid(t_ref, args.eta)
        start = time.perf_counter()
        gd = gflow.train_gd(
            p0, data, learning_rate=eta, config=gflow.SGDConfig(steps=steps, record_every=per)
        )
        P = np.asarray(jax.block_until_ready(gd.observables.P))
        err = _errors(P, P_ref, scale)
        out["gd"] = {
            "eta": eta,
            "seconds": time.perf_counter() - start,
            "steps": steps,
            "gradients": steps,
            "error": err.tolist(),
        }
        print("gd", {k: v for k, v in out["gd"].items() if k != "error"}, err.max())
    args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Where the CIFAR flow's paths part: the sliding solver on a fine save grid around the drop.

The CIFAR task of ``benchmarks/sliding_flow.py`` (float64, N = 800, d = 300, σ = 1e-5, K = 32)
from t = 0 to ``--t-end`` at each step of ``--steps``, with saves every 5 up to t = 200 and
every 0.5 after it (so the steps are exactly h), and snapshots of the parameters and sliding sets
every 5 from t = 205. Writes ``--out/paths-h{h}.npz`` (t, P, sliding per neuron, snapshots) per
step, then prints, for ``--neuron``, its P_i at the times of the 61-point grid of
``sliding_flow.py`` (interpolated) and its relative gap between the first two steps over time.

    python benchmarks/sliding_paths.py --dataset cifar:PATH [--steps 0.0625,0.03125]
        [--t-end 260] [--neuron 169] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from sliding_flow import (  # noqa: E402
    CIFAR_SAMPLES,
    CIFAR_SAVES,
    CIFAR_T_END,
    cifar_start,
    sliding_config,
)

import gflow  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="cifar:PATH")
    parser.add_argument("--steps", default="0.0625,0.03125")
    parser.add_argument("--t-end", type=float, default=260.0)
    parser.add_argument("--neuron", type=int, default=169)
    parser.add_argument("--out", type=Path, default=Path("paths"))
    args = parser.parse_args()
    ds = gflow.load_dataset(args.dataset, n_per_class=CIFAR_SAMPLES // 2)
    data = gflow.training_data(ds, jnp.float64)
    p0 = cifar_start(ds.dim)
    ts = np.concatenate([np.arange(0.0, 200.0, 5.0), np.arange(200.0, args.t_end + 0.25, 0.5)])
    snaps = np.arange(205.0, args.t_end, 5.0)
    args.out.mkdir(parents=True, exist_ok=True)
    P = {}
    for h in (float(s) for s in args.steps.split(",")):
        cfg = sliding_config(h, 32)
        start = time.perf_counter()
        traj = gflow.gradient_flow(p0, data, ts, config=cfg, snapshot_times=snaps, throw=False)
        jax.block_until_ready(traj)
        print(f"h = {h}: {gflow.status_message(traj.status)}, {time.perf_counter() - start:.0f} s")
        P[h] = np.asarray(traj.observables.P)
        np.savez_compressed(
            args.out / f"paths-h{h:g}.npz",
            t=ts,
            P=P[h],
            sliding=np.asarray(traj.sliding.sliding),
            snapshot_t=np.asarray(traj.snapshot_t),
            W=np.asarray(traj.snapshots.W),
            b=np.asarray(traj.snapshots.b),
            V=np.asarray(traj.snapshots.V),
            sliding_sets=np.asarray(traj.sliding.snapshots),
        )
    i = args.neuron
    grid = np.linspace(0.0, CIFAR_T_END, CIFAR_SAVES)
    grid = grid[(grid >= 200) & (grid <= args.t_end)]
    for h, p in P.items():
        values = " ".join(f"{np.interp(t, ts, p[:, i]):.5e}" for t in grid)
        print(f"P_{i} at t = {', '.join(f'{t:.2f}' for t in grid)}, h = {h}: {values}")
    if len(P) > 1:
        (a, pa), (b, pb) = list(P.items())[:2]
        gap = np.abs(pa[:, i] - pb[:, i]) / np.abs(pb[:, i])
        bulk = np.median(np.abs(pa - pb) / np.abs(pb), axis=1)
        for k in np.flatnonzero(ts >= 200)[::10]:
            print(f"t = {ts[k]:6.1f}: neuron {i} gap {gap[k]:.2e}, median neuron {bulk[k]:.2e}")


if __name__ == "__main__":
    main()

"""Does step refinement settle which path the CIFAR flow takes where its neurons' paths part?

The CIFAR task of ``benchmarks/sliding_flow.py`` (float64, N = 800, d = 300, σ = 1e-5, K = 32).
One common state at t = ``--start`` (the sliding solver at h = 0.0625 from the CIFAR start; kept
in ``--out/start-t{start}.npz`` and reused), then the window [start, end] from that state at the
steps h·f for every h of ``--steps`` and every factor f of ``--factors`` (saves every 4·h·f, so
every step is exactly h·f), and GD at each η of ``--etas``. Reported for ``--neuron``:
- P_i at t = end relative to the finest step's run (f = 1), and the first time it parts from
  that run by more than ``--part`` relative;
- from snapshots every ``--snap-every`` (on the save grid, so they do not change the steps), for
  each of ``--samples``: when it starts sliding on the neuron's boundary, and how its
  z_is = w_i·x_s + b_i meets the boundary (the first time it is above 0 or sliding, and its
  largest value before that: its closest approach if it never gets there).
For all neurons: the median and largest |ΔP_i| / P_i at t = end against the finest run. The
neuron's z_is for every sample s and its sliding set at the snapshots are kept in
``--out/branch-z.npz``. If the flow from that state is unique and the solver converges, the
neuron's path is the same for all fine enough steps and factors. Writes ``--json``.

    python benchmarks/sliding_branch.py --dataset cifar:PATH [--start 220] [--end 245]
        [--steps 0.0625,0.03125,0.015625,0.0078125] [--factors 1,0.99,1.01] [--etas 0.0031]
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

from sliding_flow import CIFAR_SAMPLES, cifar_start, gd_grid, sliding_config  # noqa: E402

import gflow  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def common_state(data: gflow.TrainingData, dim: int, start: float, out: Path) -> gflow.Params:
    """The sliding solver's state at t = ``start`` from the CIFAR start at h = 0.0625 (cached)."""
    path = out / f"start-t{start:g}.npz"
    if path.exists():
        with np.load(path) as f:
            return gflow.Params(*(jnp.asarray(f[k]) for k in gflow.Params._fields))
    ts = np.linspace(0.0, start, int(round(start / 5.0)) + 1)
    begin = time.perf_counter()
    traj = gflow.gradient_flow(cifar_start(dim), data, ts, config=sliding_config(0.0625, 32))
    state = jax.tree.map(lambda a: a[-1], traj.snapshots)
    np.savez(path, **{k: np.asarray(getattr(state, k)) for k in gflow.Params._fields})
    print(f"common state at t = {start:g}: {time.perf_counter() - begin:.0f} s", flush=True)
    return state


def window(
    state: gflow.Params,
    data: gflow.TrainingData,
    start: float,
    end: float,
    step: float,
    snap_every: float,
    neuron: int,
) -> dict:
    """The sliding solver from ``state`` over [start, end] at steps of exactly ``step`` (saves
    every 4 steps; snapshots, which split the steps too, at every save nearest ``snap_every``)."""
    spacing = 4.0 * step
    ts = start + spacing * np.arange(int((end - start) / spacing) + 1)
    ts = np.append(ts[ts < end - spacing / 2], end)
    snaps = ts[:: max(1, round(snap_every / spacing))]
    begin = time.perf_counter()
    traj = gflow.gradient_flow(
        state, data, ts, snapshot_times=snaps, config=sliding_config(step, 32), throw=False
    )
    jax.block_until_ready(traj)
    seconds = time.perf_counter() - begin
    W, b = np.asarray(traj.snapshots.W)[:, neuron], np.asarray(traj.snapshots.b)[:, neuron]
    z = W @ np.asarray(data.x).T + b[:, None]  # the neuron's z_is at the snapshots [K, N]
    sets = np.asarray(traj.sliding.snapshots)[:, :, neuron]
    return {
        "step": step,
        "status": gflow.status_message(traj.status),
        "seconds": seconds,
        "steps": int(traj.num_steps),
        "t": ts,
        "P": np.asarray(traj.observables.P),
        "snapshot_t": np.asarray(traj.snapshot_t),
        "z": z,
        "sets": sets,
    }


def approach(t: np.ndarray, z: np.ndarray, sliding: np.ndarray) -> dict:
    """How a pair's z_is(t) (at snapshot times ``t``) meets its boundary from below: the first
    time it is above 0 (crossed into the active side) or sliding, and the largest z before it
    (its closest approach when it never gets there), with the time of that largest z."""
    reached = np.flatnonzero((z > 0) | sliding)
    stop = int(reached[0]) if reached.size else len(z)
    k = int(np.argmax(z[:stop])) if stop else None
    return {
        "reached_at": float(t[stop]) if reached.size else None,
        "slides": bool(sliding.any()),
        "largest_z_before": None if k is None else float(z[k]),
        "at": None if k is None else float(t[k]),
    }


def gd_window(
    state: gflow.Params, data: gflow.TrainingData, start: float, end: float, eta: float
) -> dict:
    """GD from ``state`` over [start, end], records every 0.25 (η rounded so they land)."""
    records = int(round((end - start) / 0.25))
    per, steps, eta = gd_grid(np.linspace(0.0, end - start, records + 1), eta)
    begin = time.perf_counter()
    traj = gflow.train_gd(
        state,
        data,
        learning_rate=eta,
        config=gflow.SGDConfig(steps=steps, record_every=per),
    )
    P = np.asarray(jax.block_until_ready(traj.observables.P))
    return {
        "eta": eta,
        "seconds": time.perf_counter() - begin,
        "steps": steps,
        "t": start + np.asarray(traj.t),
        "P": P,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="cifar:PATH")
    parser.add_argument("--start", type=float, default=220.0)
    parser.add_argument("--end", type=float, default=245.0)
    parser.add_argument("--steps", default="0.0625,0.03125,0.015625,0.0078125")
    parser.add_argument("--factors", default="1,0.99,1.01")
    parser.add_argument("--etas", default="0.0031")
    parser.add_argument("--neuron", type=int, default=169)
    parser.add_argument("--samples", default="66,99,446,670")
    parser.add_argument("--snap-every", type=float, default=0.25)
    parser.add_argument("--part", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=Path("branch"))
    parser.add_argument("--json", type=Path, default=RESULTS / "sliding-branch.json")
    args = parser.parse_args()
    ds = gflow.load_dataset(args.dataset, n_per_class=CIFAR_SAMPLES // 2)
    data = gflow.training_data(ds, jnp.float64)
    args.out.mkdir(parents=True, exist_ok=True)
    state = common_state(data, ds.dim, args.start, args.out)
    i, samples = args.neuron, [int(s) for s in args.samples.split(",")]
    steps = [float(s) for s in args.steps.split(",")]
    factors = [float(f) for f in args.factors.split(",")]
    runs = []
    for h in steps:
        for f in factors:
            r = window(state, data, args.start, args.end, h * f, args.snap_every, i)
            r["h"], r["factor"] = h, f
            runs.append(r)
            print(
                f"h = {h:g} × {f:g}: {r['status']}, {r['steps']} steps, {r['seconds']:.0f} s",
                flush=True,
            )
    gds = []
    for eta in (float(e) for e in args.etas.split(",") if e):
        g = gd_window(state, data, args.start, args.end, eta)
        gds.append(g)
        print(f"GD η = {g['eta']:.6g}: {g['steps']} steps, {g['seconds']:.0f} s", flush=True)

    ref = min((r for r in runs if r["factor"] == 1.0), key=lambda r: r["h"])
    grid = np.arange(args.start, args.end + 1e-9, 0.25)
    ref_i = np.interp(grid, ref["t"], ref["P"][:, i])

    def compare(r: dict) -> dict:
        end_ratio = r["P"][-1] / ref["P"][-1]
        path = np.interp(grid, r["t"], r["P"][:, i]) / ref_i
        parted = np.flatnonzero(np.abs(path - 1.0) > args.part)
        row = {
            "neuron_P_end_ratio": float(end_ratio[i]),
            "neuron_parts_at": float(grid[parted[0]]) if parted.size else None,
            "median_gap_end": float(np.median(np.abs(end_ratio - 1.0))),
            "largest_gap_end": float(np.max(np.abs(end_ratio - 1.0))),
            "largest_gap_neuron": int(np.argmax(np.abs(end_ratio - 1.0))),
        }
        if "z" in r:
            first = [
                float(r["snapshot_t"][np.argmax(c)]) if c.any() else None
                for c in r["sets"][:, samples].T
            ]
            row["slides_from"] = dict(zip(map(str, samples), first))
            row["approach"] = {
                str(s): approach(r["snapshot_t"], r["z"][:, s], r["sets"][:, s]) for s in samples
            }
            row["sliding_count_end"] = int(r["sets"][-1].sum())
        return row

    out: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "backend": jax.default_backend(),
        "start": args.start,
        "end": args.end,
        "neuron": i,
        "samples": samples,
        "reference": {"h": ref["h"], "factor": 1.0},
        "sliding": [
            {k: r[k] for k in ("h", "factor", "step", "status", "seconds", "steps")} | compare(r)
            for r in runs
        ],
        "gd": [{k: g[k] for k in ("eta", "seconds", "steps")} | compare(g) for g in gds],
    }
    for row in out["sliding"] + out["gd"]:
        print(json.dumps(row))
    np.savez_compressed(
        args.out / "branch-z.npz",
        **{f"z-h{r['h']:g}-f{r['factor']:g}": r["z"] for r in runs},
        **{f"sets-h{r['h']:g}-f{r['factor']:g}": r["sets"] for r in runs},
        **{f"P-h{r['h']:g}-f{r['factor']:g}": r["P"][:, i] for r in runs},
        **{f"snapshot_t-h{r['h']:g}-f{r['factor']:g}": r["snapshot_t"] for r in runs},
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

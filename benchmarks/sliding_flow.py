"""The sliding-mode solver through the whole flow on the CIFAR task (docs/theory.md §8.1).

Float64, N = 800, d = 300 (the paper's width), σ = 1e-5, t ∈ [0, 743] (1.5× the loss-drop
time), constant steps h, h/2, h/4 of ``FlowConfig(solver="sliding")``; records each run's wall
time, gradient evaluations, balance drift, sliding pairs and crossings, the self-convergence
errors of P_i at t_end and over the trajectory, and perturbed starts (1e-12, 1e-8 relative)
integrated at the finest step (or ``--perturb-step``). Writes ``results/sliding-cifar.json`` (or
``--json``), each run's arrays over time (``…-h{h}.npz``: P_i, loss, sliding pairs, crossings) and
the figure (``.png``) of the loss, the largest P_i and the sliding-set size against t; with
``--figure-only`` it redraws the figure from the arrays already written.

    python benchmarks/sliding_flow.py --dataset cifar:/path/to/cifar10.npz [--steps 0.5,0.25,0.125]
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

import gflow  # noqa: E402

CIFAR_SAMPLES, CIFAR_WIDTH, CIFAR_SIGMA, CIFAR_SEED = 800, 300, 1e-5, 3
CIFAR_T_END, CIFAR_SAVES = 743.0, 61


def cifar_start(dim: int, width: int = CIFAR_WIDTH, sigma: float = CIFAR_SIGMA) -> gflow.Params:
    """The CIFAR runs' start (float64): every script compares runs from this one."""
    return gflow.init_params(jax.random.key(CIFAR_SEED), width, dim, sigma, dtype=jnp.float64)


def sliding_config(h: float, capacity: int) -> gflow.FlowConfig:
    """Constant steps of at most h, no step limit in practice."""
    return gflow.FlowConfig(
        solver="sliding", adaptive=False, dt0=h, max_steps=10_000_000, sliding_capacity=capacity
    )


def gd_grid(t: np.ndarray, eta: float) -> tuple[int, int, float]:
    """GD steps per save interval, steps in all and the learning rate, η rounded so that GD's
    records land on the save times ``t`` (equally spaced from 0)."""
    per = max(1, round((t[1] - t[0]) / eta))
    steps = per * (len(t) - 1)
    return per, steps, float(t[-1] / steps)


def run_arrays(traj, ts: np.ndarray) -> dict[str, np.ndarray]:
    """What a run keeps over time (``…-h{h}.npz``): t, P_i, loss, sliding pairs, crossings."""
    return {
        "t": ts,
        "P": np.asarray(traj.observables.P),
        "loss": np.asarray(traj.observables.loss),
        "sliding": np.asarray(traj.sliding.sliding).sum(axis=1),
        "crossings": np.asarray(traj.sliding.crossings),
    }


def arrays_path(out: Path, h: float) -> Path:
    """Where the run at step ``h`` keeps its per-time arrays (next to the JSON)."""
    return out.with_name(f"{out.stem}-h{h:g}.npz")


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def figure(path: Path, runs: dict[float, dict[str, np.ndarray]], top: int = 12) -> Path:
    """Loss, the ``top`` largest P_i (at t_end of the finest step), the sliding-set size and the
    gap between the P_i of successive steps against t, one line style per step h."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = sorted(runs, reverse=True)
    finest = runs[steps[-1]]
    largest = np.argsort(finest["P"][-1])[-top:]
    fig = Figure(figsize=(18, 4.2), layout="constrained")
    loss_ax, p_ax, s_ax, e_ax = fig.subplots(1, 4)
    styles = [":", "--", "-", "-."]
    for k, h in enumerate(steps):
        r, ls = runs[h], styles[k % len(styles)]
        loss_ax.plot(r["t"], r["loss"], ls, color="k", label=f"h = {h:g}")
        p_ax.plot(r["t"], r["P"][:, largest], ls, lw=1)
        p_ax.set_prop_cycle(None)
        if "sliding" in r:
            s_ax.plot(r["t"], r["sliding"], ls, color="k", label=f"h = {h:g}")
    loss_ax.set(xlabel="t", ylabel="loss L(t)", title="loss")
    p_ax.set(
        xlabel="t",
        ylabel=r"$P_i = \|w_i\|\,|v_i|$",
        yscale="log",
        title=f"the {top} largest $P_i$ at $t_{{end}}$",
    )
    s_ax.set(xlabel="t", ylabel="(neuron, sample) pairs", title="pairs sliding on their boundaries")
    scale = np.max(np.abs(finest["P"]), axis=0)
    for k, (a, b) in enumerate(zip(steps, steps[1:])):
        gap = np.abs(runs[a]["P"] - runs[b]["P"]) / scale
        ls = styles[k % len(styles)]
        e_ax.semilogy(runs[a]["t"], gap.max(axis=1), ls, color="k", label=f"h = {a:g} vs {b:g}")
        e_ax.semilogy(runs[a]["t"], np.median(gap, axis=1), ls, color="0.6", lw=1)
    e_ax.set(
        xlabel="t",
        ylabel=r"$|\Delta P_i(t)| / \max_t P_i$",
        title="step halving: largest (black), median (grey)",
    )
    if not any("sliding" in r for r in runs.values()):
        s_ax.text(0.5, 0.5, "not recorded in these runs", ha="center", transform=s_ax.transAxes)
    for ax in (loss_ax, s_ax, e_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    FigureCanvasAgg(fig).print_png(str(path))
    return path


def run(
    dataset: str,
    steps: list[float],
    samples: int,
    width: int,
    sigma: float,
    t_end: float,
    saves: int,
    perturbations: list[float],
    out: Path,
    perturb_step: float | None = None,
    capacity: int = 16,
) -> dict:
    ds = gflow.load_dataset(dataset, n_per_class=samples // 2)
    data = gflow.training_data(ds, jnp.float64)
    params0 = cifar_start(ds.dim, width, sigma)
    ts = np.linspace(0.0, t_end, saves)
    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.processor() or platform.machine(),
        "cpus": jax.local_device_count(),
        "backend": jax.default_backend(),
        "dataset": ds.name,
        "N": int(ds.n_samples),
        "D": int(ds.dim),
        "d": width,
        "sigma": sigma,
        "t_end": t_end,
        "sliding_capacity": capacity,
        "runs": {},
    }
    P = {}
    arrays: dict[float, dict[str, np.ndarray]] = {}

    def solve(p0, h):
        cfg = sliding_config(h, capacity)
        start = time.perf_counter()
        traj, stats = gflow.gradient_flow(p0, data, ts, config=cfg, return_stats=True, throw=False)
        jax.block_until_ready(traj)
        return traj, stats, time.perf_counter() - start

    for h in steps:
        traj, stats, seconds = solve(params0, h)
        obs = traj.observables
        arrays[h] = run_arrays(traj, ts)
        P[h] = arrays[h]["P"]
        np.savez_compressed(arrays_path(out, h), **arrays[h])
        result["runs"][str(h)] = {
            "h": h,
            "seconds_incl_compile": seconds,
            "status": gflow.status_message(traj.status),
            "num_steps": int(stats.num_steps),
            "evaluations": int(stats.evaluations),
            "balance_drift": float(gflow.balance_drift(obs).max()),
            "loss": arrays[h]["loss"].tolist(),
            "t": ts.tolist(),
            "sliding_pairs": arrays[h]["sliding"].tolist(),
            "crossings": arrays[h]["crossings"].tolist(),
            "qp_violation_max": float(np.max(np.asarray(traj.sliding.qp_violation))),
            "dissipation_end": float(traj.sliding.dissipation[-1]),
            "P_end": P[h][-1].tolist(),
        }
        print(
            f"h={h}: {gflow.status_message(traj.status)}; {seconds:.1f} s, {int(stats.num_steps)} "
            "steps, drift "
            f"{result['runs'][str(h)]['balance_drift']:.2e}, loss {float(obs.loss[-1]):.4f}, "
            f"max sliding {max(result['runs'][str(h)]['sliding_pairs'])}",
            flush=True,
        )
        out.write_text(json.dumps(result, indent=1))
    figure(out.with_suffix(".png"), arrays)
    scale = np.max(np.abs(P[steps[-1]]), axis=0)
    conv = []
    for a, b in zip(steps, steps[1:]):
        e = np.abs(P[a] - P[b]) / scale
        conv.append(
            {
                "h": a,
                "h_next": b,
                "error_end_max": float(e[-1].max()),
                "error_end_top": float(
                    (np.abs(P[a][-1] - P[b][-1]) / np.abs(P[b][-1]))[
                        np.argsort(P[b][-1])[-30:]
                    ].max()
                ),
                "error_traj_max": float(e.max()),
                "error_per_time": e.max(axis=1).tolist(),
            }
        )
    for i in range(len(conv) - 1):
        conv[i + 1]["order_end"] = float(
            np.log2(conv[i]["error_end_max"] / conv[i + 1]["error_end_max"])
        )
    result["self_convergence"] = conv
    out.write_text(json.dumps(result, indent=1))
    finest = perturb_step or steps[-1]
    result["perturbed"] = {}
    for eps in perturbations:
        key = jax.random.key(11)
        noise = jax.tree.map(
            lambda a: a * (1.0 + eps * jax.random.normal(key, a.shape, a.dtype)), params0
        )
        traj, _, seconds = solve(noise, finest)
        if finest not in P:
            P[finest] = np.asarray(solve(params0, finest)[0].observables.P)
        dP = np.abs(np.asarray(traj.observables.P) - P[finest]) / scale
        result["perturbed"][str(eps)] = {
            "h": finest,
            "relative_change_P_per_time": dP.max(axis=1).tolist(),
            "relative_change_P_end": float(dP[-1].max()),
            "seconds": seconds,
        }
        print(f"perturbed {eps}: change at t_end {float(dP[-1].max()):.2e}", flush=True)
        out.write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", required=True, help="cifar:PATH (a cifar-10-batches-py folder or an .npz)"
    )
    parser.add_argument("--steps", default="0.5,0.25,0.125")
    parser.add_argument("--samples", type=int, default=CIFAR_SAMPLES)
    parser.add_argument("--width", type=int, default=CIFAR_WIDTH)
    parser.add_argument("--sigma", type=float, default=CIFAR_SIGMA)
    parser.add_argument("--t-end", type=float, default=CIFAR_T_END)
    parser.add_argument("--saves", type=int, default=CIFAR_SAVES)
    parser.add_argument("--perturbations", default="1e-12,1e-8")
    parser.add_argument("--capacity", type=int, default=16, help="FlowConfig.sliding_capacity")
    parser.add_argument(
        "--perturb-step",
        type=float,
        default=None,
        help="step of the perturbed runs (default: finest)",
    )
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "sliding-cifar.json"
    )
    parser.add_argument(
        "--figure-only",
        action="store_true",
        help="redraw the figure from the arrays of --steps already written, run nothing",
    )
    args = parser.parse_args()
    steps = [float(s) for s in args.steps.split(",")]
    if args.figure_only:
        figure(
            args.json.with_suffix(".png"),
            {h: load_arrays(arrays_path(args.json, h)) for h in steps},
        )
        return
    perturbations = [float(s) for s in args.perturbations.split(",") if s]
    run(
        args.dataset,
        steps,
        args.samples,
        args.width,
        args.sigma,
        args.t_end,
        args.saves,
        perturbations,
        args.json,
        args.perturb_step,
        args.capacity,
    )


if __name__ == "__main__":
    main()

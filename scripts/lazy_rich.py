"""The lazy–rich map: where the network follows its linearised twin and where it races.

For each init scale σ and width d, the network o(x) = Σ_i v_i σ(w_i·x + b_i) (ReLU,
cross-entropy, W, V ~ N(0, σ²), b = 0) and its twin f_lin(θ) = f(θ₀) + J(θ₀)(θ − θ₀)
(`gflow.linearised`) are trained by the gradient flow (Tsit5, adaptive) from the same θ₀.

**Training rule.** Every (σ, d) point gets the same amount of training, measured by the network's
own loss: the network is trained until its training loss first reaches ``--loss-target`` L*
(default 0.1, about a seventh of log 2), on a geometric grid of record times
t_j = t₀ r^j (r = 2^(1/8), t₀ = min(1, 0.01/(dσ²)), so t* is found to within 9%); the twin is
trained for the same flow time t*. In the rich regime t* is the drop time ~ log(1/σ)/γ, in the lazy
one ~ 1/(dσ²) (docs/regimes.md), and the grid covers both without a formula for either.

At t* it records the twin's test-accuracy gap (network − twin), the function distance
RMS_s ‖f(θ) − f_lin(θ')‖ / RMS_s ‖f(θ) − f(θ₀)‖ on the training inputs, the relative change
‖θ − θ₀‖/‖θ₀‖, the tangent-kernel change ‖Θ_t − Θ₀‖_F/‖Θ₀‖_F on a probe of training inputs, the
clusters at τ = 0.95 and the top-10% share of Σ_i P_i (`gflow.regimes`). The seeds of a point run
as one vmapped flow.

    python scripts/lazy_rich.py --out docs/figures
    python scripts/lazy_rich.py --quick

Writes lazy_rich.png (heat maps over σ × d with the lines dσ² = 1, i.e. σ = d^(−1/2), where the
tangent kernel Θ ~ dσ² reaches O(1), and √d σ² = 1, i.e. σ = d^(−1/4), where the output at
initialisation reaches O(1)),
lazy_rich.json (settings, rows, the seed means, timings) and lazy_rich.csv (one row per run).
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _paper  # noqa: E402

import gflow  # noqa: E402
from gflow import regimes  # noqa: E402
from gflow.capacity import count_clusters  # noqa: E402

NAME = "lazy_rich"
SIGMAS = (1e-6, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
WIDTHS = (10, 30, 100, 300, 1000)
SAMPLES = 200
QUICK_SIGMAS = (1e-2, 1.0)
QUICK_WIDTHS = (8,)
LOSS_TARGET = 0.1
RATIO = 2.0 ** (1 / 8)  # record times t_j = t₀ r^j
CHUNK = 24  # records per flow call (all kept as snapshots)
T_CAP = 2e4  # flow time after which a point that has not reached L* is reported as such
PROBE = 32
QUICK_PROBE = 8
RTOL = 1e-3
THRESHOLD = 0.95
TOP = 0.1


def parse(argv):
    p = argparse.ArgumentParser(
        prog=NAME, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for tests")
    p.add_argument(
        "--dataset",
        default="mnist",
        help="mnist (embedded digits, 0–4 vs 5–9; default) or cifar:PATH",
    )
    p.add_argument("--out", default=f"gflow-out/{NAME}", metavar="DIR", help="output folder")
    p.add_argument(
        "--sigmas",
        default=None,
        help="comma-separated σ (default 1e-6,1e-3,1e-2,0.03,0.1,0.3,1; quick 0.01,1)",
    )
    p.add_argument(
        "--widths", default=None, help="comma-separated d (default 10,30,100,300,1000; quick 8)"
    )
    p.add_argument("--seeds", type=int, default=None, help="seeds per point (default 1)")
    p.add_argument("--samples", type=int, default=None, help=f"N (default {SAMPLES}; quick 32)")
    p.add_argument(
        "--loss-target",
        type=float,
        default=LOSS_TARGET,
        help=f"training loss L* that ends training (default {LOSS_TARGET:g})",
    )
    p.add_argument("--probe", type=int, default=None, help=f"kernel probe inputs (default {PROBE})")
    p.add_argument("--rtol", type=float, default=RTOL, help=f"flow tolerance (default {RTOL:g})")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the dataset subsample")
    args = p.parse_args(argv)
    for name in ("seeds", "samples", "probe"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise SystemExit(f"--{name} must be > 0; got {value}")
    if not args.loss_target > 0:
        raise SystemExit(f"--loss-target must be > 0; got {args.loss_target}")
    if not args.rtol > 0:
        raise SystemExit(f"--rtol must be > 0; got {args.rtol}")
    return args


def _positive(values, flag: str) -> list:
    if not values or any(not v > 0 for v in values):
        raise SystemExit(f"{flag} must be positive numbers; got {values}")
    return values


@functools.partial(jax.jit, static_argnames=("config",))
def _flow_network(params0, data, ts, config):
    """The network's flow of every seed on the record grid ``ts``, a snapshot at each record."""
    return jax.vmap(
        lambda p: gflow.gradient_flow(
            p, data, ts, snapshot_times=ts[1:-1], config=config, throw=False
        )
    )(params0)


@functools.partial(jax.jit, static_argnames=("config",))
def _flow_twin(params0, data, ts, config):
    """Each seed's twin linearised at its own θ₀, on its own grid ``ts`` ``[S, T]``."""
    return jax.vmap(
        lambda p, t: gflow.gradient_flow(
            p, data, t, config=config, throw=False, model=gflow.linearised(p)
        )
    )(params0, ts)


def record_times(width: int, sigma: float) -> tuple[float, float]:
    """(t₀, r) of the record grid t_j = t₀ r^j: t₀ = min(1, 0.01/(dσ²))."""
    return min(1.0, 0.01 / (width * sigma**2)), RATIO


def train_to_target(params0, data, width: int, sigma: float, target: float, config):
    """Flow every seed until its training loss first reaches ``target`` (or t = `T_CAP`).

    Returns per seed: t*, θ(t*), the network's records at t* (loss, train and test accuracy),
    whether L* was reached, and the run's status."""
    seeds = params0.W.shape[0]
    t0, ratio = record_times(width, sigma)
    start = 0.0
    state = params0
    found = [None] * seeds
    status = np.zeros(seeds, dtype=int)
    j = 0
    while start < T_CAP and any(f is None for f in found):
        times = t0 * ratio ** np.arange(j, j + CHUNK - 1)
        ts = jnp.asarray(np.concatenate([[start], times]), params0.W.dtype)
        traj = _flow_network(state, data, ts, config)
        obs = traj.observables
        loss = np.asarray(obs.loss)
        status = np.maximum(status, np.asarray(traj.status))
        for s in range(seeds):
            if found[s] is not None:
                continue
            hit = np.nonzero(loss[s] <= target)[0]
            if hit.size:
                k = int(hit[0])
                found[s] = _at(traj, s, k, True)
        state = jax.tree.map(lambda a: a[:, -1], traj.snapshots)
        start = float(times[-1])
        j += CHUNK - 1
    last = len(ts) - 1  # type: ignore[possibly-unbound]
    return [
        f if f is not None else _at(traj, s, last, False)  # type: ignore[possibly-unbound]
        for s, f in enumerate(found)
    ], status


def _at(traj, s: int, k: int, reached: bool) -> dict:
    obs = traj.observables
    return {
        "t_star": float(traj.t[s, k]),
        "params": gflow.Params(*(jnp.asarray(a[s, k]) for a in traj.snapshots)),
        "loss": float(obs.loss[s, k]),
        "train_accuracy": float(obs.accuracy[s, k]),
        "test_accuracy": float(obs.test_accuracy[s, k]),
        "reached": reached,
    }


def run_point(args, data, dim: int, width: int, sigma: float, seeds: list[int], config, probe):
    """Rows of one (σ, d) point, one per seed."""
    clock = time.perf_counter()
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    params0 = jax.vmap(lambda k: gflow.init_params(k, width, dim, sigma, dtype=data.x.dtype))(keys)
    ends, status = train_to_target(params0, data, width, sigma, args.loss_target, config)
    ts_twin = jnp.stack([jnp.linspace(0.0, e["t_star"], 9, dtype=data.x.dtype) for e in ends])
    twin = _flow_twin(params0, data, ts_twin, config)
    twin_status = np.asarray(twin.status)
    rows = []
    for i, (seed, end) in enumerate(zip(seeds, ends)):
        p0 = gflow.Params(*(a[i] for a in params0))
        q = gflow.Params(*(a[i, -1] for a in twin.snapshots))
        p = end["params"]
        test_twin = float(twin.observables.test_accuracy[i, -1])
        rows.append(
            {
                "sigma": sigma,
                "width": width,
                "seed": seed,
                "d_sigma2": width * sigma**2,
                "t_star": end["t_star"],
                "reached_target": end["reached"],
                "status": int(max(status[i], twin_status[i])),
                "loss": end["loss"],
                "twin_loss": float(twin.observables.loss[i, -1]),
                "train_accuracy": end["train_accuracy"],
                "twin_train_accuracy": float(twin.observables.accuracy[i, -1]),
                "test_accuracy": end["test_accuracy"],
                "twin_test_accuracy": test_twin,
                "test_accuracy_gap": end["test_accuracy"] - test_twin,
                "function_distance": float(
                    regimes.function_distance(p, q, data.x, gflow.linearised(p0))
                ),
                "relative_change": float(regimes.relative_change(p, p0)),
                "twin_relative_change": float(regimes.relative_change(q, p0)),
                "kernel_change": float(regimes.kernel_change(p, p0, probe)),
                "clusters": count_clusters(p, threshold=THRESHOLD),
                "twin_clusters": count_clusters(q, threshold=THRESHOLD),
                "top_share": regimes.top_share(p, TOP),
                "twin_top_share": regimes.top_share(q, TOP),
            }
        )
    seconds = time.perf_counter() - clock
    for r in rows:
        r["seconds"] = round(seconds / len(rows), 2)
    return rows


SUMMARY_KEYS = (
    "d_sigma2",
    "t_star",
    "loss",
    "twin_loss",
    "test_accuracy",
    "twin_test_accuracy",
    "test_accuracy_gap",
    "function_distance",
    "relative_change",
    "twin_relative_change",
    "kernel_change",
    "clusters",
    "twin_clusters",
    "top_share",
    "twin_top_share",
)


def summarise(rows, sigmas, widths) -> list[dict]:
    """Mean over seeds of each (σ, d) point."""
    out = []
    for d in widths:
        for s in sigmas:
            mine = [r for r in rows if r["width"] == d and r["sigma"] == s]
            entry = {"sigma": s, "width": d, "seeds": len(mine)}
            entry["reached_target"] = all(r["reached_target"] for r in mine)
            for key in SUMMARY_KEYS:
                entry[key] = float(np.mean([float(r[key]) for r in mine])) if mine else math.nan
            out.append(entry)
    return out


PANELS = (
    ("test_accuracy_gap", "test-accuracy gap, network − twin", "RdBu_r", False),
    ("function_distance", "function distance network–twin", "viridis", True),
    ("kernel_change", "kernel change ‖Θ_t − Θ₀‖/‖Θ₀‖", "viridis", True),
    ("clusters", f"clusters at τ = {THRESHOLD:g}", "magma", True),
    ("top_share", f"share of ΣP_i of the top {TOP:.0%}", "magma", False),
    ("t_star", "flow time t* to reach L*", "cividis", True),
)


def _label(value: float) -> str:
    """A cell's number: integers as such up to 9999, else two significant digits."""
    if abs(value) >= 10 and abs(value) < 1e4 and float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.2g}".replace("e+0", "e").replace("e-0", "e-")


def _line_x(sigma_of_width, sig, wid) -> np.ndarray:
    """Column positions (on the equal-cell grid of ``sig``) of σ = ``sigma_of_width``(d) for each
    row d of ``wid``, interpolated in log σ."""
    return np.interp(
        np.log([sigma_of_width(d) for d in wid]),
        np.log(sig),
        np.arange(len(sig), dtype=float),
        left=-0.5,
        right=len(sig) - 0.5,
    )


def plot(path: Path, summary, sigmas, widths, title: str) -> None:
    """Six heat maps on an equal-cell grid of σ (columns) × d (rows), each cell labelled, with the
    lines σ = d^(−1/2) and σ = d^(−1/4) interpolated in log σ."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure
    from matplotlib.patheffects import withStroke

    fig = Figure(figsize=(15, 8.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    sig, wid = sorted(sigmas), sorted(widths)
    rows = np.arange(len(wid), dtype=float)
    kernel_line = _line_x(lambda d: d**-0.5, sig, wid)
    output_line = _line_x(lambda d: d**-0.25, sig, wid)
    for n, (key, label, cmap, log) in enumerate(PANELS):
        ax = fig.add_subplot(2, 3, n + 1)
        grid = np.full((len(wid), len(sig)), np.nan)
        for e in summary:
            grid[wid.index(e["width"]), sig.index(e["sigma"])] = e[key]
        finite = grid[np.isfinite(grid) & (grid > 0 if log else True)]
        if log and finite.size:
            norm = LogNorm(vmin=finite.min(), vmax=max(finite.max(), finite.min() * 1.01))
        elif key == "test_accuracy_gap":
            top = max(float(np.nanmax(np.abs(grid))), 1e-3) if np.isfinite(grid).any() else 1
            norm = Normalize(-top, top)
        else:
            norm = Normalize(0.0, 1.0)
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap=cmap, norm=norm)
        fig.colorbar(image, ax=ax, shrink=0.85)
        for i in range(len(wid)):
            for j in range(len(sig)):
                if np.isfinite(grid[i, j]):
                    ax.text(
                        j,
                        i,
                        _label(grid[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        path_effects=[withStroke(linewidth=2, foreground="white")],
                    )
        ax.plot(kernel_line, rows, "w--", lw=1.8, label="σ = d^(−1/2) (dσ² = 1)")
        ax.plot(output_line, rows, "w:", lw=1.8, label="σ = d^(−1/4) (√d σ² = 1)")
        ax.set_xticks(range(len(sig)), [f"{s:g}" for s in sig], fontsize=8)
        ax.set_yticks(range(len(wid)), [str(d) for d in wid], fontsize=8)
        ax.set_xlim(-0.5, len(sig) - 0.5)
        ax.set_ylim(-0.5, len(wid) - 0.5)
        ax.set_xlabel("init scale σ")
        ax.set_ylabel("width d")
        ax.set_title(label, fontsize=9)
        if n == 0:
            handles, labels = ax.get_legend_handles_labels()
            fig.legend(
                handles, labels, loc="outside lower center", ncols=2, fontsize=8, facecolor="0.6"
            )
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    args = parse(argv)
    out = _paper.prepare_out(args.out)
    sigmas = _positive(
        _paper.comma_list(args.sigmas, float, QUICK_SIGMAS if args.quick else SIGMAS), "--sigmas"
    )
    widths = _positive(
        _paper.comma_list(args.widths, int, QUICK_WIDTHS if args.quick else WIDTHS), "--widths"
    )
    seeds = list(range(args.seeds or 1))
    n = args.samples or (_paper.QUICK_SAMPLES if args.quick else SAMPLES)
    dataset = _paper.load(args.dataset, n, seed=args.data_seed)
    data = gflow.training_data(dataset)
    probe = data.x[: args.probe or (QUICK_PROBE if args.quick else PROBE)]
    config = gflow.FlowConfig(rtol=args.rtol)
    clock = _paper.Clock()
    rows = []
    for d in widths:
        for s in sigmas:
            point = run_point(args, data, dataset.dim, d, s, seeds, config, probe)
            rows.extend(point)
            r = point[0]
            print(
                f"d={d:5d} σ={s:8.1e} dσ²={d * s * s:9.3g}: t*={r['t_star']:9.4g} "
                f"gap={r['test_accuracy_gap']:+.3f} D={r['function_distance']:.3g} "
                f"K={r['kernel_change']:.3g} rel={r['relative_change']:.3g} "
                f"clusters={r['clusters']} top={r['top_share']:.2f} ({r['seconds']:.1f} s)",
                flush=True,
            )
        clock.lap("training and measures")
    summary = summarise(rows, sigmas, widths)
    title = (
        f"{_paper.short_name(dataset)}, N = {n}: network vs linearised twin, trained by the flow "
        f"until the network's loss reaches L* = {args.loss_target:g} ({len(seeds)} seed(s))"
    )
    plot(out / f"{NAME}.png", summary, sigmas, widths, title)
    clock.lap("plotting")
    checks = {
        "all_points_ran": len(rows) == len(sigmas) * len(widths) * len(seeds),
        "all_flows_ok": all(r["status"] == 0 for r in rows),
        "clusters_at_most_width": all(1 <= r["clusters"] <= r["width"] for r in rows),
        "top_share_in_range": all(
            TOP - 1e-6 <= r["top_share"] <= 1 + 1e-6 for r in rows if np.isfinite(r["top_share"])
        ),
        "measures_finite": all(
            np.isfinite(r["function_distance"]) and np.isfinite(r["kernel_change"]) for r in rows
        ),
    }
    record = {
        "settings": {
            "dataset": args.dataset,
            "dataset_name": dataset.name,
            "quick": args.quick,
            "samples": n,
            "dim": dataset.dim,
            "sigmas": sigmas,
            "widths": widths,
            "seeds": seeds,
            "loss_target": args.loss_target,
            "record_ratio": RATIO,
            "t_cap": T_CAP,
            "probe": int(probe.shape[0]),
            "rtol": args.rtol,
            "threshold": THRESHOLD,
            "top_fraction": TOP,
            "trainer": "gradient flow, Tsit5 (adaptive), float32",
            "rule": "train until the network's training loss first reaches L* on the record "
            "grid t_j = min(1, 0.01/(dσ²)) 2^(j/8); the twin trains for the same t*",
            "jax_backend": jax.default_backend(),
        },
        "rows": rows,
        "summary": summary,
        "targets_reached": sum(bool(r["reached_target"]) for r in rows),
    }
    return _paper.write_outputs(out, NAME, rows, record, checks, clock)


if __name__ == "__main__":
    sys.exit(main())

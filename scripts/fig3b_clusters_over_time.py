"""Figure 3b: clusters at τ = 0.95 at initialisation, before the loss drops, and at the end,
for several init scales σ.

The paper: silent alignment shrinks the number of clusters before the loss drops; a larger σ
shortens the period in which directions move while norms stay small, and leaves more clusters.
"Before the loss drops" is the last parameter snapshot taken before the training loss has
fallen by 5% of its total decrease (`gflow.theory.loss_drop_time` with fraction 0.05).

    python scripts/fig3b_clusters_over_time.py --dataset cifar:/path/cifar10.npz --out out/fig3b
    python scripts/fig3b_clusters_over_time.py --quick

Writes fig3b_clusters_over_time.png (bars: clusters at the three times per σ; and the number
of clusters along training), .json and .csv.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _paper  # noqa: E402

from gflow.capacity import neuron_clusters
from gflow.theory import loss_drop_time

NAME = "fig3b_clusters_over_time"
DROP_FRACTION = 0.05


def parse(argv):
    p = _paper.base_parser(NAME, __doc__)
    p.add_argument(
        "--sigmas",
        default=None,
        help="comma-separated σ (default 1e-5,1e-4,1e-3,1e-2; quick 1e-5,1e-2)",
    )
    _paper.add_options(p, "width", "samples", "tau")
    return _paper.parse_checked(p, argv)


def snapshot_before_drop(t_snap: np.ndarray, t_drop: float) -> int:
    """Index of the last snapshot strictly before ``t_drop`` (0 if none; last if no drop)."""
    if not np.isfinite(t_drop):
        return len(t_snap) - 1
    before = np.nonzero(t_snap < t_drop)[0]
    return int(before[-1]) if before.size else 0


def main(argv=None) -> int:
    args = parse(argv)
    out = _paper.prepare_out(args.out)
    sigmas = _paper.comma_list(
        args.sigmas, float, [1e-5, 1e-2] if args.quick else [1e-5, 1e-4, 1e-3, 1e-2]
    )
    width = _paper.width_of(args)
    n = _paper.samples_of(args)
    n_seeds = len(_paper.seeds_of(args, 3, quick=1))
    config = _paper.recorded_schedule(args, 40, 2)
    clock = _paper.Clock()
    dataset, data = _paper.training_set(args, n)
    lanes = [(s, seed) for s in sigmas for seed in range(n_seeds)]
    seeds = [seed for _, seed in lanes]
    params0 = _paper.init_lanes(seeds, [s for s, _ in lanes], width, dataset.dim)
    traj, ok = _paper.train_lanes(data, params0, seeds, config=config, **_paper.sgd_options(args))
    clock.lap("training")
    t = np.asarray(traj.t[0])
    t_snap = np.asarray(traj.snapshot_t[0])
    rows, curves = [], {}
    for i in ok:
        sigma, seed = lanes[i]
        loss_curve = np.asarray(traj.observables.loss[i])
        t_drop = loss_drop_time(t, loss_curve, fraction=DROP_FRACTION)
        before = snapshot_before_drop(t_snap, t_drop)
        counts = [
            neuron_clusters(
                _paper.lane(_paper.lane(traj.snapshots, i), k), threshold=args.tau
            ).count
            for k in range(len(t_snap))
        ]
        curves[f"{sigma:g}/{seed}"] = counts
        rows.append(
            {
                "sigma": sigma,
                "seed": seed,
                "clusters_init": counts[0],
                "t_before_drop": t_snap[before],
                "clusters_before_drop": counts[before],
                "t_end": t_snap[-1],
                "clusters_end": counts[-1],
                "t_loss_drop_5pct": t_drop,
                "final_loss": loss_curve[-1],
                "train_accuracy": float(traj.observables.accuracy[i, -1]),
                "test_accuracy": float(traj.observables.test_accuracy[i, -1]),
            }
        )
        print(
            f"σ={sigma:g} seed {seed}: clusters init {counts[0]}, before drop "
            f"(t={t_snap[before]:.0f}) {counts[before]}, end {counts[-1]}"
        )
    clock.lap("clustering")

    summary = []
    for s in sigmas:
        r = [row for row in rows if row["sigma"] == s]
        summary.append(
            {
                "sigma": s,
                **{
                    f"{k}_mean": float(np.mean([row[k] for row in r])) if r else np.nan
                    for k in ("clusters_init", "clusters_before_drop", "clusters_end")
                },
            }
        )
    fig, (ax, ax2) = _paper.figure(2)
    x = np.arange(len(sigmas))
    for j, (key, label) in enumerate(
        (
            ("clusters_init", "initialisation"),
            ("clusters_before_drop", "before loss drop"),
            ("clusters_end", "end of training"),
        )
    ):
        means = [r[f"{key}_mean"] for r in summary]
        ax.bar(x + (j - 1) * 0.27, means, width=0.27, label=label)
    ax.set_xticks(x, [f"{s:g}" for s in sigmas])
    ax.set_xlabel("init scale σ")
    ax.set_ylabel(f"clusters at τ = {args.tau:g}")
    ax.set_title(f"{_paper.run_label(dataset, n, width)}, {n_seeds} seed(s)", fontsize=9)
    ax.legend(fontsize=7)
    colours = {f"{s:g}": f"C{j}" for j, s in enumerate(sigmas)}
    for key, counts in curves.items():
        sigma_text, seed_text = key.split("/")
        ax2.plot(
            t_snap,
            counts,
            lw=1,
            color=colours[sigma_text],
            label=f"σ = {sigma_text}" if seed_text == str(min(range(n_seeds))) else None,
        )
    ax2.set_xlabel("flow time t = kη/(1−β)")
    ax2.set_ylabel("clusters")
    ax2.legend(fontsize=7)
    _paper.save(fig, out / f"{NAME}.png")
    clock.lap("plotting")
    checks = {
        "init_clusters_at_most_width": all(r["clusters_init"] <= width for r in rows),
        "all_lanes_finished": len(rows) == len(lanes),
    }
    return _paper.write_outputs(
        out,
        NAME,
        rows,
        {
            "figure": "3b",
            "settings": _paper.settings(
                args,
                sigmas=sigmas,
                width=width,
                samples=n,
                seeds=n_seeds,
                tau=args.tau,
                steps=config.steps,
                before_drop=f"last snapshot before the loss fell {DROP_FRACTION:.0%}",
            ),
            "rows": rows,
            "summary": summary,
            "snapshot_t": t_snap,
            "clusters_along_training": curves,
        },
        checks,
        clock,
    )


if __name__ == "__main__":
    sys.exit(main())

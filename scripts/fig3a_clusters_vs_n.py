"""Figure 3a: effective capacity (clusters at τ = 0.95) at the end of training against N.

For each width d and dataset size N, several seeds are trained with SGD (batch 4, momentum
0.9, σ = 1e-5) to a fixed flow time; the neurons of each final network are clustered
(complete linkage on the cosine similarity of (w_i, b_i) within each output alignment κ,
`gflow.capacity.neuron_clusters`). The paper: the number of clusters grows with N until it
saturates at d.

    python scripts/fig3a_clusters_vs_n.py --dataset cifar:/path/cifar10.npz --out out/fig3a
    python scripts/fig3a_clusters_vs_n.py --quick

Writes fig3a_clusters_vs_n.png, fig3a_clusters_vs_n.json (settings, rows, summary, timings)
and fig3a_clusters_vs_n.csv (one row per run).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _paper  # noqa: E402

from gflow.capacity import neuron_clusters

NAME = "fig3a_clusters_vs_n"


def parse(argv):
    p = _paper.base_parser(NAME, __doc__)
    p.add_argument(
        "--widths", default=None, help="comma-separated d (default 30,100,300; quick 8,16)"
    )
    p.add_argument(
        "--sizes",
        default=None,
        help="comma-separated N (default 100,200,400,800,1600; quick 32,64)",
    )
    _paper.add_options(p, "sigma", "tau")
    return _paper.parse_checked(p, argv)


def main(argv=None) -> int:
    args = parse(argv)
    out = _paper.prepare_out(args.out)
    widths = _paper.comma_list(args.widths, int, (8, 16) if args.quick else (30, 100, 300))
    sizes = _paper.comma_list(
        args.sizes, int, (32, _paper.QUICK_SAMPLES) if args.quick else (100, 200, 400, 800, 1600)
    )
    seeds = _paper.seeds_of(args, 3)
    steps = _paper.final_steps(args)
    clock = _paper.Clock()
    rows = []
    for n in sizes:
        dataset, data = _paper.training_set(args, n)
        for d in widths:
            finals = _paper.final_networks(args, data, seeds, d, dataset.dim, steps)
            clock.lap("training")
            for seed, final in finals:
                clusters = neuron_clusters(final, threshold=args.tau)
                metrics = {k: float(v) for k, v in _paper.evaluate(final, data).items()}
                rows.append({"N": n, "d": d, "seed": seed, "clusters": clusters.count, **metrics})
            clock.lap("clustering")
            print(
                f"N={n:5d} d={d:4d}: clusters "
                + ", ".join(str(r["clusters"]) for r in rows if r["N"] == n and r["d"] == d)
            )
    summary = []
    for d in widths:
        for n in sizes:
            c = np.array([r["clusters"] for r in rows if r["N"] == n and r["d"] == d], dtype=float)
            summary.append(
                {
                    "d": d,
                    "N": n,
                    "seeds": c.size,
                    "clusters_mean": c.mean() if c.size else np.nan,
                    "clusters_std": c.std() if c.size else np.nan,
                }
            )
    fig, (ax,) = _paper.figure()
    for d in widths:
        s = [r for r in summary if r["d"] == d]
        line = ax.errorbar(
            [r["N"] for r in s],
            [r["clusters_mean"] for r in s],
            yerr=[r["clusters_std"] for r in s],
            marker="o",
            capsize=3,
            label=f"d = {d}",
        )
        ax.axhline(d, color=line[0].get_color(), ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training samples N")
    ax.set_ylabel(f"clusters at τ = {args.tau:g} (end of training)")
    ax.set_title(
        f"{_paper.short_name(dataset)}: effective capacity vs N ({len(seeds)} seeds)", fontsize=9
    )
    ax.legend(fontsize=8)
    _paper.save(fig, out / f"{NAME}.png")
    checks = {
        "clusters_at_most_width": all(r["clusters"] <= r["d"] for r in rows),
        "all_lanes_finished": len(rows) == len(sizes) * len(widths) * len(seeds),
    }
    clock.lap("plotting")
    return _paper.write_outputs(
        out,
        NAME,
        rows,
        {
            "figure": "3a",
            "settings": _paper.settings(
                args,
                widths=widths,
                sizes=sizes,
                seeds=seeds,
                sigma=args.sigma,
                tau=args.tau,
                steps=steps,
            ),
            "rows": rows,
            "summary": summary,
        },
        checks,
        clock,
    )


if __name__ == "__main__":
    sys.exit(main())

"""Appendix G table: accuracy before and after merging clusters at τ = 0.95, N ∈ {200, 800, 4000}.

Each network (d = 300, σ = 1e-5, SGD batch 4, momentum 0.9) is trained to a fixed flow time; its
neurons are clustered (complete linkage on cos of (w_i, b_i) within each κ) and each cluster
is replaced by one neuron (`gflow.capacity.merge_report`): direction û = normalised Σ w̃_j,
outgoing weight Σ ‖w̃_j‖ v_j (docs/theory.md §6, "norm"), and the first-order refinement
u = Σ P̃_j ŵ̃_j / Σ P̃_j ("contribution"). Reported: clusters, train and test accuracy before and
after, the largest logit change and the bound it must respect,
‖o_merged(x) − o(x)‖ ≤ Σ_j ‖w̃_j‖‖v_j‖ |(ŵ̃_j − û)·x̃|.

    python scripts/table_g_merging.py --dataset cifar:/path/cifar10.npz --out out/tableG
    python scripts/table_g_merging.py --quick

Writes table_g_merging.md (the table), .png (test accuracy before/after, clusters), .json and .csv.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _paper  # noqa: E402

from gflow.capacity import WEIGHTINGS, merge_report, neuron_clusters

NAME = "table_g_merging"


def parse(argv):
    p = _paper.base_parser(NAME, __doc__)
    p.add_argument(
        "--sizes", default=None, help="comma-separated N (default 200,800,4000; quick 32,64)"
    )
    _paper.add_options(p, "width", "sigma", "tau")
    p.add_argument(
        "--save-params",
        action="store_true",
        help="also write each final network as params_N<N>_seed<s>.npz (W, b, V; for "
        "gflow capacity --params)",
    )
    return _paper.parse_checked(p, argv)


def _pct(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.2f}"


def markdown(rows: list[dict], title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| N | seed | merge | d | clusters | d / clusters | train acc % (before → merged) "
        "| test acc % (before → merged) | Δ test (pp) | max ‖Δo‖ | bound | max ‖o‖ |",
        "|---:|---:|---|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['N']} | {r['seed']} | {r['weighting']} | {r['width']} | {r['clusters']} "
            f"| {r['width'] / r['clusters']:.1f} | "
            f"{_pct(r['train_accuracy'])} → {_pct(r['train_accuracy_merged'])} | "
            f"{_pct(r['test_accuracy'])} → {_pct(r['test_accuracy_merged'])} | "
            f"{100 * (r['test_accuracy_merged'] - r['test_accuracy']):+.2f} "
            f"| {r['max_logit_change']:.3g} | "
            f"{r['max_bound']:.3g} | {r['logit_scale']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse(argv)
    out = _paper.prepare_out(args.out)
    sizes = _paper.comma_list(
        args.sizes, int, [32, _paper.QUICK_SAMPLES] if args.quick else [200, 800, 4000]
    )
    width = _paper.width_of(args)
    seeds = _paper.seeds_of(args, 2)
    steps = _paper.final_steps(args)
    clock = _paper.Clock()
    rows = []
    for n in sizes:
        dataset, data = _paper.training_set(args, n)
        finals = _paper.final_networks(args, data, seeds, width, dataset.dim, steps)
        clock.lap("training")
        for seed, final in finals:
            if args.save_params:
                np.savez(out / f"params_N{n}_seed{seed}.npz", W=final.W, b=final.b, V=final.V)
            clusters = neuron_clusters(final, threshold=args.tau)
            for weighting in WEIGHTINGS:
                report = merge_report(final, data, weighting=weighting, clusters=clusters)
                rows.append({"N": n, "seed": seed, **report._asdict()})
                print(
                    f"N={n} seed {seed} ({weighting}): {report.clusters} clusters of {width}; "
                    "test acc "
                    f"{report.test_accuracy:.4f} → {report.test_accuracy_merged:.4f}; max |Δo| "
                    f"{report.max_logit_change:.3g} ≤ {report.max_bound:.3g}"
                )
        clock.lap("merging")
    name = _paper.short_name(dataset)
    table = markdown(
        rows,
        f"Merging at τ = {args.tau:g}: {name}, d = {width}, σ = {args.sigma:g}, flow time "
        f"{_paper.flow_time_of(args):g} ({steps} SGD steps)",
    )
    (out / f"{NAME}.md").write_text(table)
    fig, (ax, ax2) = _paper.figure(2, width=4.0)
    norm_rows = [r for r in rows if r["weighting"] == "norm"]
    contrib = [r for r in rows if r["weighting"] == "contribution"]
    x = np.arange(len(norm_rows))
    labels = [f"N={r['N']}\ns{r['seed']}" for r in norm_rows]
    for off, values, label in (
        (-0.27, [r["test_accuracy"] for r in norm_rows], "before"),
        (
            0.0,
            [r["test_accuracy_merged"] for r in norm_rows],
            "merged (norm-weighted, docs/theory.md §6)",
        ),
        (0.27, [r["test_accuracy_merged"] for r in contrib], "merged (contribution)"),
    ):
        ax.bar(x + off, [100 * v for v in values], width=0.27, label=label)
    ax.set_ylim(min(100 * r["test_accuracy"] for r in rows) - 5, 100)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("test accuracy %")
    ax.legend(fontsize=7)
    ax2.bar(x, [r["clusters"] for r in norm_rows])
    ax2.axhline(width, ls=":", color="k", lw=0.8)
    ax2.set_xticks(x, labels, fontsize=7)
    ax2.set_ylabel(f"clusters at τ = {args.tau:g} (of d = {width})")
    fig.suptitle(f"{name}: merging aligned neurons", fontsize=9)
    _paper.save(fig, out / f"{NAME}.png")
    checks = {
        "bound_holds": all(r["bound_holds"] for r in rows),
        "gap_within_complete_linkage_radius": all(
            r["max_angle_gap"] <= np.sqrt(2 * (1 - args.tau)) + 1e-5 for r in rows
        ),
        "all_lanes_finished": len(rows) == len(sizes) * len(seeds) * len(WEIGHTINGS),
    }
    status = _paper.write_outputs(
        out,
        NAME,
        rows,
        {
            "table": "Appendix G",
            "settings": _paper.settings(
                args,
                sizes=sizes,
                width=width,
                seeds=seeds,
                sigma=args.sigma,
                tau=args.tau,
                steps=steps,
            ),
            "rows": rows,
        },
        checks,
        clock,
    )
    print(table)
    return status


if __name__ == "__main__":
    sys.exit(main())

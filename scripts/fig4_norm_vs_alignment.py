"""Figure 4: final norm P_i = ‖w_i‖‖v_i‖ against the alignment cos δ_i at t = 0 and early t.

The race (docs/theory.md §4–§5): within a group, P_i grows like exp(γ t cos δ_i), so early alignment
ranks the final norms. cos δ_i is measured against the target of the neuron's current cell,
T_κ(g_i) (the paper's §5 "computing the alignment"); at t = 0, when v_i is still random, κ_i is
the alignment v_i will reach, predicted from the data (sign Σ_s a_i(s) ỹ_s, Appendix B.1).
Every score of `gflow.capacity.neuron_scores` is ranked against log P_i(end) with Spearman's ρ
and a two-sided permutation p-value.

    python scripts/fig4_norm_vs_alignment.py --dataset cifar:/path/cifar10.npz --out out/fig4
    python scripts/fig4_norm_vs_alignment.py --quick

Writes fig4_norm_vs_alignment.png, .json (settings, correlations, timings) and .csv (one row per
neuron: scores at t = 0 and early t, final P_i).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _paper  # noqa: E402

from gflow.capacity import score_quality
from gflow.theory import loss_drop_time

NAME = "fig4_norm_vs_alignment"


def parse(argv):
    p = _paper.base_parser(NAME, __doc__)
    _paper.add_options(p, "width", "samples", "sigma")
    _paper.add_alignment_options(
        p, note=": 500 steps at η = 0.01, a quarter of the loss-drop time or less"
    )
    return _paper.parse_checked(p, argv)


def main(argv=None) -> int:
    args = parse(argv)
    out = _paper.prepare_out(args.out)
    width = _paper.width_of(args)
    n = _paper.samples_of(args)
    seeds = _paper.seeds_of(args, 1)
    early = _paper.early_time_of(args)
    permutations = _paper.permutations_of(args)
    flow_time = _paper.flow_time_of(args)
    if not 0 < early < flow_time:
        raise SystemExit(f"--early-time must lie in (0, {flow_time:g}); got {early}")
    config = _paper.recorded_schedule(args, 80)
    clock = _paper.Clock()
    dataset, data = _paper.training_set(args, n)
    params0 = _paper.init_lanes(seeds, args.sigma, width, dataset.dim)
    traj, ok = _paper.train_lanes(data, params0, seeds, config=config, **_paper.sgd_options(args))
    clock.lap("training")
    t = np.asarray(traj.t[0])
    j_early = _paper.nearest_record(t, early)
    results, neuron_rows = [], []
    for i in ok:
        obs = traj.observables
        _, scores = _paper.early_scores(traj, params0, data, i, j_early)
        final_P = np.asarray(obs.P[i, -1], dtype=np.float64)
        quality = score_quality(scores, final_P, permutations=permutations, seed=seeds[i])
        t_drop = loss_drop_time(t, np.asarray(obs.loss[i]), fraction=0.5)
        results.append(
            {
                "seed": seeds[i],
                "t_early": t[j_early],
                "t_loss_drop_50pct": t_drop,
                "final_loss": float(obs.loss[i, -1]),
                "train_accuracy": float(obs.accuracy[i, -1]),
                "test_accuracy": float(obs.test_accuracy[i, -1]),
                "spearman_log_P": {k: q.spearman_log_P._asdict() for k, q in quality.items()},
            }
        )
        for neuron in range(width):
            neuron_rows.append(
                {
                    "seed": seeds[i],
                    "neuron": neuron,
                    "P_final": final_P[neuron],
                    "P_early": float(obs.P[i, j_early, neuron]),
                    "kappa_final": int(obs.kappa[i, -1, neuron]),
                    **{k: v[neuron] for k, v in scores.items()},
                }
            )
        rho = quality["cos_delta_early"].spearman_log_P
        print(
            f"seed {seeds[i]}: Spearman(cos δ at t={t[j_early]:g}, log P_end) = {rho.rho:.3f} "
            f"(p = {rho.p_value:.2g}); "
            f"at t=0: {quality['cos_delta_t0'].spearman_log_P.rho:.3f}; loss-drop time {t_drop:.0f}"
        )
    clock.lap("scores")

    fig, axes = _paper.figure(2)
    first = [r for r in neuron_rows if r["seed"] == seeds[ok[0]]]
    P = np.array([r["P_final"] for r in first])
    colour = np.log10(np.maximum(P, P[P > 0].min() if np.any(P > 0) else 1.0))
    r0 = results[0]["spearman_log_P"]
    for ax, key, when in (
        (axes[0], "cos_delta_t0", "t = 0"),
        (axes[1], "cos_delta_early", f"t = {t[j_early]:g}"),
    ):
        x = np.array([r[key] for r in first])
        sc = ax.scatter(x, P, c=colour, cmap="viridis", s=10)
        ax.set_yscale("log")
        ax.set_xlabel(f"cos δ_i at {when}")
        ax.set_ylabel("final P_i = ‖w_i‖‖v_i‖")
        ax.set_title(f"ρ = {r0[key]['rho']:.2f}, p = {r0[key]['p_value']:.1g}", fontsize=9)
    fig.colorbar(sc, ax=axes[1], label="log10 final P_i")
    fig.suptitle(
        f"{_paper.run_label(dataset, n, width)}, σ = {args.sigma:g}, seed {seeds[ok[0]]}",
        fontsize=9,
    )
    _paper.save(fig, out / f"{NAME}.png")
    clock.lap("plotting")
    checks = {
        "all_lanes_finished": len(results) == len(seeds),
        "p_values_in_unit_interval": all(
            0 < q["p_value"] <= 1
            for r in results
            for q in r["spearman_log_P"].values()
            if q["p_value"] is not None
        ),
    }
    return _paper.write_outputs(
        out,
        NAME,
        neuron_rows,
        {
            "figure": "4",
            "settings": _paper.settings(
                args,
                width=width,
                samples=n,
                seeds=seeds,
                sigma=args.sigma,
                early_time=float(t[j_early]),
                permutations=permutations,
                steps=config.steps,
                dataset_name=dataset.describe(),
            ),
            "results": results,
        },
        checks,
        clock,
    )


if __name__ == "__main__":
    sys.exit(main())

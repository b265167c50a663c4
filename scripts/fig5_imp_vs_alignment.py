"""Figure 5: weights pruned per neuron by IMP against the neuron's early alignment cos δ_i.

Iterative magnitude pruning with rewinding to initialisation (`gflow.capacity.imp`: global over W
and V, biases kept, three rounds of q = 1 − (1−s)^{1/3}) to sparsities s ∈ {20, 50, 70}%, with
the random-pruning and random-reinitialisation controls. Each neuron's count of pruned incoming
weights (its row of W) is set against cos δ_i early in the dense run (the same SGD run as IMP's
round 0: same initialisation, same mini-batches). The paper: well-aligned neurons keep their
weights, especially at low sparsity.

    python scripts/fig5_imp_vs_alignment.py --dataset cifar:/path/cifar10.npz --out out/fig5
    python scripts/fig5_imp_vs_alignment.py --quick

Writes fig5_imp_vs_alignment.png, .json (settings, per-sparsity accuracies of IMP and controls,
correlations, AUCs, invariant checks, timings) and .csv (one row per neuron and sparsity).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _paper  # noqa: E402

from gflow.capacity import (
    IMPConfig,
    imp,
    kept_by_imp,
    mann_whitney_auc,
    per_round_fraction,
    pruned_per_neuron,
    spearman_test,
)

NAME = "fig5_imp_vs_alignment"
SPARSITIES = (0.2, 0.5, 0.7)


def parse(argv):
    p = _paper.base_parser(NAME, __doc__)
    _paper.add_options(p, "width", "samples", "sigma")
    p.add_argument(
        "--sparsities", default=None, help="comma-separated targets s (default 0.2,0.5,0.7)"
    )
    p.add_argument("--rounds", type=int, default=3, help="pruning rounds (default 3)")
    p.add_argument(
        "--rewind-step", type=int, default=0, help="rewind survivors to this step (default 0: init)"
    )
    _paper.add_alignment_options(p)
    return _paper.parse_checked(p, argv)


def check_imp(result, targets, n_weights: int) -> dict:
    """Invariants of an IMP result vmapped over targets: exact counts, nesting, exact zeros."""
    host = jax.tree.map(np.asarray, result)
    masks, finals = host.masks, host.final_params
    rounds = masks.W.shape[1] - 1
    pruned = (~masks.W).sum(axis=(2, 3)) + (~masks.V).sum(axis=(2, 3))  # [S, R+1]
    schedule = host.num_pruned  # round(n·(1 − (1−s)^{r/R})) per round
    exact = np.array(
        [[n_weights * (1 - (1 - s) ** (r / rounds)) for r in range(rounds + 1)] for s in targets]
    )
    controls = (host.random_pruning, host.random_reinit)
    return {
        "sparsity_exact_each_round": bool(np.array_equal(pruned, schedule)),
        # round(·) of the geometric schedule, up to float32 rounding of n·(1 − (1−s)^{r/R}).
        "schedule_is_rounded_geometric": bool(
            np.all(np.abs(schedule - exact) <= 0.5 + 1e-6 * n_weights)
        ),
        "masks_nested": bool(
            np.all(masks.W[:, 1:] <= masks.W[:, :-1]) and np.all(masks.V[:, 1:] <= masks.V[:, :-1])
        ),
        "pruned_weights_exactly_zero": bool(
            np.all(finals.W[~masks.W] == 0) and np.all(finals.V[~masks.V] == 0)
        ),
        "control_pruned_weights_exactly_zero": all(
            bool(np.all(c.final_params.W[~c.mask.W] == 0)) for c in controls
        ),
        "random_mask_same_count": bool(
            np.array_equal(
                (~host.random_pruning.mask.W).sum(axis=(1, 2)), (~masks.W[:, -1]).sum(axis=(1, 2))
            )
        ),
        "biases_never_pruned": bool(np.all(masks.b)),
    }


def main(argv=None) -> int:
    args = parse(argv)
    out = _paper.prepare_out(args.out)
    width = _paper.width_of(args)
    n = _paper.samples_of(args)
    targets = _paper.comma_list(args.sparsities, float, SPARSITIES)
    early = _paper.early_time_of(args)
    permutations = _paper.permutations_of(args)
    seeds = (
        [0, 1] if args.quick else [0]
    )  # lane 0 is pruned; quick keeps two lanes to share fig4's compilation
    config = _paper.recorded_schedule(args, 80)
    clock = _paper.Clock()
    dataset, data = _paper.training_set(args, n)
    params0 = _paper.init_lanes(seeds, args.sigma, width, dataset.dim)
    traj, ok = _paper.train_lanes(data, params0, seeds, config=config, **_paper.sgd_options(args))
    if 0 not in ok:
        raise SystemExit("the dense run diverged; lower --lr")
    clock.lap("dense training")
    t = np.asarray(traj.t[0])
    j_early = _paper.nearest_record(t, early)
    p0 = _paper.lane(params0, 0)
    early_obs, scores = _paper.early_scores(traj, params0, data, 0, j_early)
    cos_early = scores["cos_delta_early"]

    _, k_batch = _paper.lane_keys(seeds)
    imp_config = IMPConfig(
        steps=config.steps,
        batch_size=args.batch_size,
        rounds=args.rounds,
        rewind_step=args.rewind_step,
    )
    result = jax.vmap(
        lambda s: imp(
            p0,
            k_batch[0],
            data,
            target_sparsity=s,
            learning_rate=args.learning_rate,
            momentum=args.momentum,
            config=imp_config,
            throw=False,
        )
    )(jnp.asarray(targets))
    result = jax.block_until_ready(result)
    clock.lap("IMP")
    n_weights = int(p0.W.size + p0.V.size)
    checks = check_imp(result, targets, n_weights)
    # The dense round of IMP is the recorded SGD run: same init, same mini-batches.
    dense_imp = np.asarray(result.final_params.W)[0, 0]
    dense_sgd = np.asarray(traj.final_params.W)[0]
    checks["dense_round_matches_recorded_run"] = bool(
        np.max(np.abs(dense_imp - dense_sgd)) <= 1e-3 * np.max(np.abs(dense_sgd))
    )
    rewound = np.asarray(result.rewind_params.W)  # [targets, d, D]
    checks["rewind_to_init"] = args.rewind_step != 0 or bool(
        np.all(rewound == np.asarray(p0.W)[None])
    )
    checks["all_runs_finite"] = bool(np.all(np.asarray(result.status) == 0))

    per_target, rows = [], []
    for j, s in enumerate(targets):
        mask_final = jax.tree.map(lambda a: np.asarray(a)[j, -1], result.masks)
        pruned_in, pruned_out = (np.asarray(a) for a in pruned_per_neuron(mask_final))
        kept = kept_by_imp(mask_final.W)
        corr = spearman_test(cos_early, pruned_in, permutations=permutations, seed=j)
        aucs = {k: mann_whitney_auc(v, kept) for k, v in scores.items()}
        acc = lambda a: float(a[j])  # noqa: E731
        per_target.append(
            {
                "target_sparsity": s,
                "per_round_fraction_q": float(per_round_fraction(s, args.rounds)),
                "sparsity_per_round": np.asarray(result.sparsity[j]),
                "pruned_per_round": np.asarray(result.num_pruned[j]),
                "imp_train_accuracy_per_round": np.asarray(result.train_accuracy[j]),
                "imp_test_accuracy_per_round": np.asarray(result.test_accuracy[j]),
                "random_pruning_test_accuracy": acc(result.random_pruning.test_accuracy),
                "random_pruning_train_accuracy": acc(result.random_pruning.train_accuracy),
                "random_reinit_test_accuracy": acc(result.random_reinit.test_accuracy),
                "random_reinit_train_accuracy": acc(result.random_reinit.train_accuracy),
                "spearman_cos_early_vs_pruned_incoming": corr._asdict(),
                "neurons_kept": int(kept.sum()),
                "auc_kept": aucs,
            }
        )
        for i in range(width):
            rows.append(
                {
                    "target_sparsity": s,
                    "neuron": i,
                    "cos_delta_early": cos_early[i],
                    "cos_delta_t0": scores["cos_delta_t0"][i],
                    "pruned_incoming": int(pruned_in[i]),
                    "pruned_outgoing": int(pruned_out[i]),
                    "kept": bool(kept[i]),
                    "P_final_dense": float(traj.observables.P[0, -1, i]),
                }
            )
        print(
            f"s={s:.0%}: test acc IMP {per_target[-1]['imp_test_accuracy_per_round'][-1]:.3f}, "
            f"random pruning {per_target[-1]['random_pruning_test_accuracy']:.3f}, "
            f"reinit {per_target[-1]['random_reinit_test_accuracy']:.3f}"
            f"; Spearman(cos δ early, pruned incoming) = {corr.rho:.3f} (p = {corr.p_value:.2g}); "
            f"AUC(cos δ early → kept) = {aucs['cos_delta_early']:.3f}"
        )
    clock.lap("scores")

    fig, axes = _paper.figure(len(targets), width=3.6)
    for ax, j, s in zip(axes, range(len(targets)), targets):
        r = [row for row in rows if row["target_sparsity"] == s]
        kappa = np.asarray(early_obs.kappa)
        ax.scatter(
            [row["cos_delta_early"] for row in r],
            [row["pruned_incoming"] for row in r],
            s=9,
            c=np.where(kappa > 0, "tab:blue", "tab:orange"),
        )
        c = per_target[j]["spearman_cos_early_vs_pruned_incoming"]
        ax.set_title(f"s = {s:.0%}: ρ = {c['rho']:.2f}, p = {c['p_value']:.1g}", fontsize=9)
        ax.set_xlabel(f"cos δ_i at t = {t[j_early]:g}")
        ax.set_ylabel(f"pruned incoming weights (of {dataset.dim})")
    fig.suptitle(
        f"{_paper.run_label(dataset, n, width)}: IMP ({args.rounds} rounds, "
        f"rewind step {args.rewind_step}); blue κ = +1, orange κ = −1",
        fontsize=9,
    )
    _paper.save(fig, out / f"{NAME}.png")
    clock.lap("plotting")
    return _paper.write_outputs(
        out,
        NAME,
        rows,
        {
            "figure": "5",
            "settings": _paper.settings(
                args,
                width=width,
                samples=n,
                seed=0,
                sigma=args.sigma,
                early_time=float(t[j_early]),
                rounds=args.rounds,
                rewind_step=args.rewind_step,
                steps=config.steps,
                prunable_weights=n_weights,
                biases_pruned=False,
                dataset_name=dataset.describe(),
            ),
            "dense": {
                "train_accuracy": float(traj.observables.accuracy[0, -1]),
                "test_accuracy": float(traj.observables.test_accuracy[0, -1]),
            },
            "per_sparsity": per_target,
        },
        checks,
        clock,
    )


if __name__ == "__main__":
    sys.exit(main())

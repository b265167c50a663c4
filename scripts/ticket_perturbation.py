"""The loss-landscape critique's perturbation test: does the winning ticket still win when the rest
of the network is perturbed at initialisation?

A critique of lottery tickets holds that a winning ticket works only while the rest of the network
stays as it was at initialisation. The race picture (docs/theory.md §4–§6) holds that within each
group of neurons P_i(t) = ‖w_i‖‖v_i‖ ≈ P_i(0) exp(γ_i t) with γ_i ∝ cos δ_i, so the winners are
fixed by each neuron's own alignment and size at t = 0, and the ticket is the set of winners.

For each seed, IMP with rewinding to θ_0 (`gflow.capacity.imp`: global over W and V, biases kept)
finds the ticket at each sparsity s. Then the full, unmasked network is trained again from a
perturbed start, with the same trainer (`train_masked` with a mask that keeps everything), the same
mini-batches and the same number of steps as IMP's dense round:

    rest arm:    θ'_0 = θ_0 + ε σ ξ  on m weights IMP pruned away   (θ_0 elsewhere)
    ticket arm:  θ'_0 = θ_0 + ε σ ξ  on m weights IMP kept           (the control)
    reinit:      θ'_0 = σ ζ          on the same sets (a fresh N(0, σ²) draw)

with ξ, ζ ~ N(0, 1) i.i.d., σ the init scale, and m = min(#pruned, #kept) (both arms touch equally
many weights; for s ≤ ½ the rest arm is the whole pruned set). The same ξ serves every ε.
Measured on each run's final P_i and the ticket's neurons T (`kept_by_imp`): the share of ΣP_i
carried by T, the share of the top-|T| neurons that lie in T, AUC(P_i → T), Spearman(P_i, the
neuron's kept weights), Spearman(P_i, P_i of the unperturbed run), the race's forecast
Spearman(cos δ_i(0) of the start, P_i), and the test accuracy.

    python scripts/ticket_perturbation.py --samples 400 --width 100 --seeds 3 --out docs/figures
    python scripts/ticket_perturbation.py --quick

Writes ticket_perturbation.png, .json (settings, both pictures' predictions, per-run and
seed-averaged numbers, the reading of each cell, invariant checks, timings) and .csv (one row per
neuron and run).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _paper  # noqa: E402

import gflow  # noqa: E402
from gflow.capacity import (  # noqa: E402
    IMPConfig,
    alignment_to_cell_target,
    imp,
    kept_by_imp,
    mann_whitney_auc,
    predicted_alignment,
    pruned_per_neuron,
    spearman,
)
from gflow.network import Params  # noqa: E402

NAME = "ticket_perturbation"
SPARSITIES = (0.2, 0.5, 0.8)
QUICK_SPARSITIES = (0.2, 0.8)
EPSILONS = (0.0, 0.1, 1.0, 10.0)
SEEDS = 3
ARMS = ("rest", "ticket")
PLAIN = "none"  # the arm label of the unperturbed run
REINIT = "reinit"
# Reading of a cell (sparsity, perturbation), from seed means: the ticket keeps its race when the
# rest arm leaves it at least RETAINED of its share above chance; the arms differ when the ticket
# arm retains at least ARM_GAP less share, or reshuffles (Spearman with the unperturbed P_i) at
# least ARM_GAP more; a lost race counts as a head start when the non-ticket neurons began with at
# least HEAD_START times their unperturbed Σ P_i(0).
RETAINED = 0.5
ARM_GAP = 0.2
HEAD_START = 10.0
# Random streams of the perturbation, folded into key(seed) away from its init/batch split.
STREAM = 0x71C7
NOISE_TAG, FRESH_TAG, SUBSET_TAG = 1, 2, 16

PREDICTIONS = {
    "race": {
        "rest": (
            "little change for ε ≲ 1: the pruned weights belong mostly to neurons that lose the "
            "race anyway, and the ticket's neurons keep their own alignment and size; a fresh or "
            "ε ≤ 1 draw only gives the losers another random chance. For ε ≫ 1 the perturbed "
            "neurons start with P_i(0) up to (1+ε²)× larger, a head start of ln(1+ε²)/γ in the "
            "race, so they may overtake the ticket"
        ),
        "ticket": (
            "reshuffles the winners once ε ≳ 1 (or on re-initialisation): the ticket's neurons "
            "lose the alignment that made them win; for ε ≫ 1 they also start ahead, so the "
            "ticket can keep or gain share by size alone while its test accuracy need not follow"
        ),
    },
    "critique": {
        "rest": (
            "the ticket fails: once the rest of the network differs from its initial values the "
            "ticket's neurons no longer win (share and AUC fall towards chance, the winners "
            "reshuffle) and the trained network loses what the ticket gave it"
        ),
        "ticket": "no specific prediction beyond sensitivity of the ticket to its own weights",
    },
}


def parse(argv):
    p = _paper.base_parser(NAME, __doc__ or "")
    _paper.add_options(p, "width", "samples", "sigma")
    p.add_argument(
        "--sparsities",
        default=None,
        help="comma-separated targets s (default 0.2,0.5,0.8; quick 0.2,0.8)",
    )
    p.add_argument(
        "--eps",
        default=None,
        help="comma-separated noise scales ε, in units of σ (default 0,0.1,1,10)",
    )
    p.add_argument(
        "--no-reinit", action="store_true", help="skip the re-initialisation perturbation"
    )
    p.add_argument("--rounds", type=int, default=3, help="IMP pruning rounds (default 3)")
    args = _paper.parse_checked(p, argv)
    eps = _paper.comma_list(args.eps, float, EPSILONS)
    if not all(np.isfinite(e) and e >= 0 for e in eps):
        raise SystemExit(f"--eps must be finite and >= 0; got {args.eps}")
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1; got {args.rounds}")
    return args


# --------------------------------------------------------------------------- perturbation


def perturbation_key(seed: int, tag: int) -> jax.Array:
    """key(seed) folded with `STREAM`, then with ``tag``: independent of the init and batch keys
    `_paper.lane_keys` splits from key(seed)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(int(seed)), STREAM), tag)


def weight_sets(mask: Params) -> tuple[Params, Params]:
    """(pruned-away set, kept set) of W and V as boolean `Params`; biases belong to neither."""
    none = jnp.zeros(mask.b.shape, bool)
    pruned = Params(W=~mask.W, b=none, V=~mask.V)
    kept = Params(W=mask.W, b=none, V=mask.V)
    return pruned, kept


def set_size(selected: Params) -> int:
    """#{selected entries of W, b and V}."""
    return int(sum(int(np.sum(np.asarray(a))) for a in selected))


def matched_size(mask: Params) -> int:
    """m = min(#pruned, #kept) over W and V: the size of both perturbed sets."""
    pruned, kept = weight_sets(mask)
    return min(set_size(pruned), set_size(kept))


def random_subset(key: jax.Array, eligible: Params, m: int) -> Params:
    """m entries of W and V drawn uniformly without replacement among the eligible ones (all of
    them when m = #eligible); biases are never drawn."""
    flat = jnp.concatenate([eligible.W.ravel(), eligible.V.ravel()])
    if not 0 <= m <= int(jnp.sum(flat)):
        raise ValueError(f"cannot draw {m} of {int(jnp.sum(flat))} eligible weights")
    score = jnp.where(flat, jax.random.uniform(key, flat.shape), 2.0)
    chosen = jnp.zeros(flat.shape, bool).at[jnp.argsort(score)[:m]].set(True)
    split = eligible.W.size
    return Params(
        W=chosen[:split].reshape(eligible.W.shape),
        b=jnp.zeros(eligible.b.shape, bool),
        V=chosen[split:].reshape(eligible.V.shape),
    )


@functools.partial(jax.jit, static_argnames=("reinit",))
def perturbed_start(
    params0: Params, selected: Params, noise: Params, fresh: Params, eps: float, reinit: bool
) -> Params:
    """θ'_0 = θ_0 + ε·(σξ) on the selected entries, or the fresh draw σζ there when ``reinit``;
    θ_0 elsewhere. ``noise`` and ``fresh`` hold σξ and σζ. With ε = 0 and no reinit θ'_0 = θ_0
    exactly (x + 0·y = x in floating point)."""
    moved = fresh if reinit else jax.tree.map(lambda p, n: p + eps * n, params0, noise)
    return jax.tree.map(lambda s, p, q: jnp.where(s, q, p), selected, params0, moved)


def noise_draws(seed: int, width: int, dim: int, sigma: float) -> tuple[Params, Params]:
    """(σξ, σζ): two independent N(0, σ²) draws of W and V (b = 0) for ``seed``."""
    return (
        gflow.init_params(perturbation_key(seed, NOISE_TAG), width, dim, sigma),
        gflow.init_params(perturbation_key(seed, FRESH_TAG), width, dim, sigma),
    )


def arm_sets(seed: int, j: int, mask: Params) -> dict[str, Params]:
    """The rest arm's and the ticket arm's perturbed sets at sparsity index ``j``: m random
    pruned-away weights and m random kept weights, m = `matched_size`."""
    pruned, kept = weight_sets(mask)
    m = matched_size(mask)
    return {
        arm: random_subset(perturbation_key(seed, SUBSET_TAG + 2 * j + a), eligible, m)
        for a, (arm, eligible) in enumerate(zip(ARMS, (pruned, kept)))
    }


def modes(eps_list, reinit: bool) -> list[tuple[str, float, bool]]:
    """(label, ε, reinit) of every perturbation: ε = 0 first (the unperturbed run)."""
    out = [(f"eps={e:g}", float(e), False) for e in sorted(set(eps_list) | {0.0})]
    return out + ([(REINIT, float("nan"), True)] if reinit else [])


# --------------------------------------------------------------------------- measurement


def constant_inputs(x) -> np.ndarray:
    """Input coordinates equal on every training sample, ``[D]``: ∂L/∂W_ij = 0 for them at all
    times, so those weights keep their initial values whatever happens elsewhere."""
    x = np.asarray(x)
    return np.all(x == x[:1], axis=0)


def constant_pixel_share(selected: Params | None, constant: np.ndarray) -> float:
    """Share of a perturbed set's weights that sit on constant inputs (NaN: no set)."""
    if selected is None:
        return float("nan")
    on_constant = int(np.sum(np.asarray(selected.W)[:, constant]))
    return on_constant / set_size(selected)


def neuron_sizes(params: Params) -> np.ndarray:
    """P_i = ‖w_i‖ ‖v_i‖, ``[..., d]``."""
    W, V = np.asarray(params.W, np.float64), np.asarray(params.V, np.float64)
    return np.linalg.norm(W, axis=-1) * np.linalg.norm(V, axis=-1)


def ticket_share(P, ticket) -> float:
    """Σ_{i∈T} P_i / Σ_i P_i: the share of the network's size carried by the ticket's neurons."""
    P = np.asarray(P, np.float64)
    return float(P[np.asarray(ticket, bool)].sum() / P.sum())


def winners_in_ticket(P, ticket) -> float:
    """|top-|T| neurons by P_i ∩ T| / |T| (ties broken by neuron index)."""
    t = np.asarray(ticket, bool)
    k = int(t.sum())
    top = np.argsort(-np.asarray(P, np.float64), kind="stable")[:k]
    return float(t[top].mean()) if k else float("nan")


def head_start(P0, P0_plain, neurons) -> float:
    """Σ_{i∈neurons} P_i(0) / Σ_{i∈neurons} P_i(0) unperturbed: how much larger the group starts
    (the race's head start is ln of this over γ)."""
    n = np.asarray(neurons, bool)
    if not n.any():
        return float("nan")
    return float(np.sum(np.asarray(P0)[n]) / np.sum(np.asarray(P0_plain)[n]))


def run_metrics(P, P_plain, ticket, kept_weights, cos0, P0, P0_plain) -> dict:
    """The race's outcome of one run against the ticket (module docstring)."""
    t = np.asarray(ticket, bool)
    return {
        "ticket_share": ticket_share(P, ticket),
        "chance_share": float(np.mean(ticket)),
        "winners_in_ticket": winners_in_ticket(P, ticket),
        "auc_P_ticket": mann_whitney_auc(P, ticket),
        "spearman_P_kept_weights": spearman(kept_weights, P),
        "spearman_P_vs_unperturbed": spearman(P, P_plain),
        "spearman_P_cos_delta_0": spearman(cos0, P),
        "spearman_P_P0": spearman(P0, P),
        "head_start_ticket": head_start(P0, P0_plain, t),
        "head_start_rest": head_start(P0, P0_plain, ~t),
    }


@jax.jit
def _outcome(params: Params, start: Params, data) -> dict:
    """Accuracies of the trained network and the race's predictors at its start, one lane."""
    return {
        "train_accuracy": gflow.accuracy(params, data.x, data.y),
        "test_accuracy": gflow.accuracy(params, data.x_test, data.y_test),
        "final_loss": gflow.loss(params, data.x, data.y),
        "cos_delta_0": alignment_to_cell_target(start, data, predicted_alignment(start, data)),
    }


def outcomes(finals: Params, starts: Params, data) -> dict:
    return jax.tree.map(np.asarray, jax.vmap(_outcome, in_axes=(0, 0, None))(finals, starts, data))


def reading(rest: dict, ticket: dict) -> str:
    """Which picture a cell's seed-averaged numbers support (thresholds `RETAINED`, `ARM_GAP`,
    `HEAD_START`)."""
    kept_rest, kept_ticket = rest["retained_excess_share"], ticket["retained_excess_share"]
    if not np.isfinite(kept_rest):
        return "undetermined"
    if kept_rest < RETAINED:
        if rest["head_start_rest"]["mean"] >= HEAD_START:
            return (
                "both: the ticket lost its race to perturbed neurons that started larger "
                "(the race's head start; the critique's failure)"
            )
        return "critique: the ticket lost its race when the rest was perturbed"
    reshuffle_rest = rest["spearman_P_vs_unperturbed"]["mean"]
    reshuffle_ticket = ticket["spearman_P_vs_unperturbed"]["mean"]
    if kept_ticket <= kept_rest - ARM_GAP or reshuffle_ticket <= reshuffle_rest - ARM_GAP:
        return "race: the ticket survives the rest's perturbation; its own reshuffles the race"
    return "neither distinguishes: the ticket keeps its race in both arms"


def summarise(runs: list[dict], sparsities, labels) -> list[dict]:
    """Seed means and standard deviations of each (sparsity, arm, perturbation), with the reading
    of each (sparsity, perturbation) from the share retained above chance."""
    keys = (
        "ticket_share",
        "chance_share",
        "winners_in_ticket",
        "auc_P_ticket",
        "spearman_P_kept_weights",
        "spearman_P_vs_unperturbed",
        "spearman_P_cos_delta_0",
        "spearman_P_P0",
        "head_start_ticket",
        "head_start_rest",
        "constant_pixel_share",
        "test_accuracy",
        "ticket_test_accuracy",
    )
    out = []
    for s in sparsities:
        plain = [r for r in runs if r["target_sparsity"] == s and r["arm"] == PLAIN]
        base = np.mean([r["ticket_share"] - r["chance_share"] for r in plain])
        for label in labels:
            cell = {"target_sparsity": s, "perturbation": label}
            for arm in ARMS if label != labels[0] else (PLAIN,):
                mine = [
                    r
                    for r in runs
                    if r["target_sparsity"] == s and r["arm"] == arm and r["perturbation"] == label
                ]
                stats = {}
                for k in keys:
                    v = np.array([r[k] for r in mine], np.float64)
                    v = v[np.isfinite(v)]
                    stats[k] = {
                        "mean": float(v.mean()) if v.size else float("nan"),
                        "std": float(v.std()) if v.size else float("nan"),
                    }
                excess = np.mean([r["ticket_share"] - r["chance_share"] for r in mine])
                stats["retained_excess_share"] = float(excess / base) if base > 0 else float("nan")
                stats["seeds"] = len(mine)
                cell[arm] = stats
            if label != labels[0]:
                cell["reading"] = reading(cell["rest"], cell["ticket"])
            out.append(cell)
    return out


# --------------------------------------------------------------------------- the experiment

# The ε = 0 run and IMP's dense round are the same SGD run compiled in two programs: bit for bit
# equal while XLA picks the same kernels (the --quick sizes), otherwise apart by float32 rounding
# that the exponential phase amplifies (≈ 0.7% of max |W| at N = 400, d = 100, 8000 steps).
MAX_GAP = 0.05


def compare_runs(finals: Params, result, plain_lane: dict, seeds, data) -> dict:
    """The ε = 0 runs against IMP's dense rounds: max |ΔW| / max |W|, Spearman of P_i and the
    gap in test accuracy, worst over seeds."""
    gaps, rhos, accs = [], [], []
    for i, seed in enumerate(seeds):
        dense = jax.tree.map(lambda a: np.asarray(a)[i, 0, 0], result.final_params)
        mine = _paper.lane(finals, plain_lane[seed])
        gaps.append(float(np.max(np.abs(mine.W - dense.W)) / np.max(np.abs(dense.W))))
        rhos.append(spearman(neuron_sizes(mine), neuron_sizes(dense)))
        accs.append(
            abs(float(np.asarray(result.test_accuracy)[i, 0, 0]) - float(_outcome_acc(mine, data)))
        )
    return {
        "max_relative_W_gap": max(gaps),
        "min_spearman_P": min(rhos),
        "max_test_accuracy_gap": max(accs),
    }


def _outcome_acc(params: Params, data) -> jax.Array:
    return gflow.accuracy(jax.tree.map(jnp.asarray, params), data.x_test, data.y_test)


def run_imp(args, params0: Params, k_batch, data, targets, steps: int):
    """IMP (no random controls) for every seed (leading axis) and target (second axis)."""
    config = IMPConfig(steps=steps, batch_size=args.batch_size, rounds=args.rounds)

    def one(p, k):
        return jax.vmap(
            lambda s: imp(
                p,
                k,
                data,
                target_sparsity=s,
                learning_rate=args.learning_rate,
                momentum=args.momentum,
                config=config,
                controls=False,
                throw=False,
            )
        )(jnp.asarray(targets))

    return jax.block_until_ready(jax.vmap(one)(params0, k_batch))


def build_lanes(seeds, params0: Params, masks, targets, mode_list, width, dim, sigma):
    """Perturbed starts of every run, stacked, with their descriptions and sets.

    Lane 0 of each seed is the ε = 0 start (built through `perturbed_start`, so it must equal
    θ_0); then every (sparsity, arm, perturbation) with ε > 0 or reinit.
    """
    starts, lanes, sets = [], [], {}
    for i, seed in enumerate(seeds):
        p0 = _paper.lane(params0, i)
        noise, fresh = noise_draws(seed, width, dim, sigma)
        for j in range(len(targets)):
            mask = jax.tree.map(lambda a: jnp.asarray(a[i, j, -1]), masks)
            for arm, sel in arm_sets(seed, j, mask).items():
                sets[(seed, j, arm)] = sel
                for label, eps, reinit in mode_list:
                    if label == mode_list[0][0] and (j, arm) != (0, ARMS[0]):
                        continue  # one unperturbed run per seed
                    starts.append(
                        perturbed_start(p0, sel, noise, fresh, 0.0 if reinit else eps, reinit)
                    )
                    lanes.append(
                        {"seed": seed, "j": j, "arm": arm, "perturbation": label, "eps": eps}
                    )
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *starts)
    return stacked, lanes, sets


def check_lanes(seeds, params0, starts, lanes, sets, masks, mode_list, targets) -> dict:
    """Invariants of the perturbed starts: ε = 0 is θ_0 exactly; each perturbation changes only
    its set (and, up to float32 rounding of ε σ ξ below half an ulp of θ_0, all of it); the rest
    set lies in the pruned weights, the ticket set in the kept ones, both of size m."""
    host = jax.tree.map(np.asarray, starts)
    ok = {
        "eps0_start_equals_init": True,
        "perturbation_only_on_its_set": True,
        "perturbation_covers_its_set": True,
        "rest_set_pruned_ticket_set_kept": True,
        "sets_same_size": True,
        "rest_set_is_all_pruned_when_s_le_half": True,
        "biases_untouched": True,
    }
    for n, lane in enumerate(lanes):
        i = seeds.index(lane["seed"])
        p0 = _paper.lane(params0, i)
        start = _paper.lane(host, n)
        changed = [np.asarray(a) != np.asarray(b) for a, b in zip(start, p0)]
        if lane["perturbation"] == mode_list[0][0]:
            ok["eps0_start_equals_init"] &= all(np.array_equal(a, b) for a, b in zip(start, p0))
            continue
        sel = [np.asarray(a) for a in sets[(lane["seed"], lane["j"], lane["arm"])]]
        ok["perturbation_only_on_its_set"] &= all(
            bool(np.all(c <= s)) for c, s in zip(changed, sel)
        )
        ok["perturbation_covers_its_set"] &= sum(int(c.sum()) for c in changed) >= 0.999 * sum(
            int(s.sum()) for s in sel
        )
        ok["biases_untouched"] &= not bool(changed[1].any())
    # The ε = 0 start built through every (sparsity, arm) set is θ_0 too.
    for (seed, j, arm), sel in sets.items():
        i = seeds.index(seed)
        p0 = jax.tree.map(jnp.asarray, _paper.lane(params0, i))
        again = perturbed_start(p0, sel, p0, p0, 0.0, False)
        ok["eps0_start_equals_init"] &= all(
            np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again, p0)
        )
        mask = jax.tree.map(lambda a: np.asarray(a)[i, j, -1], masks)
        inside = mask if arm == "ticket" else jax.tree.map(np.logical_not, mask)
        ok["rest_set_pruned_ticket_set_kept"] &= bool(
            np.all(np.asarray(sel.W) <= inside.W) and np.all(np.asarray(sel.V) <= inside.V)
        )
        ok["sets_same_size"] &= set_size(sel) == matched_size(jax.tree.map(jnp.asarray, mask))
        if arm == "rest" and targets[j] <= 0.5:
            pruned = int((~mask.W).sum() + (~mask.V).sum())
            ok["rest_set_is_all_pruned_when_s_le_half"] &= set_size(sel) == pruned
    return ok


def main(argv=None) -> int:
    args = parse(argv)
    out = _paper.prepare_out(args.out)
    width = _paper.width_of(args)
    n = _paper.samples_of(args)
    targets = _paper.comma_list(
        args.sparsities, float, QUICK_SPARSITIES if args.quick else SPARSITIES
    )
    if not all(0 < s < 1 for s in targets):
        raise SystemExit(f"--sparsities must lie in (0, 1); got {args.sparsities}")
    eps_list = _paper.comma_list(args.eps, float, EPSILONS)
    mode_list = modes(eps_list, not args.no_reinit)
    labels = [m[0] for m in mode_list]
    seeds = _paper.seeds_of(args, SEEDS)
    steps = _paper.final_steps(args)
    clock = _paper.Clock()
    dataset, data = _paper.training_set(args, n)
    constant = constant_inputs(data.x)
    dim = dataset.dim
    params0 = _paper.init_lanes(seeds, args.sigma, width, dim)
    _, k_batch = _paper.lane_keys(seeds)

    result = run_imp(args, params0, k_batch, data, targets, steps)
    clock.lap("IMP")
    masks = result.masks  # [seeds, S, R+1, ...]

    starts, lanes, sets = build_lanes(
        seeds, params0, masks, targets, mode_list, width, dim, args.sigma
    )
    checks = check_lanes(seeds, params0, starts, lanes, sets, masks, mode_list, targets)
    clock.lap("perturbed starts")
    finals, ok = _paper.train_final(
        data, starts, [lane["seed"] for lane in lanes], steps=steps, **_paper.sgd_options(args)
    )
    clock.lap("training")
    checks["all_runs_finite"] = len(ok) == len(lanes) and bool(
        np.all(np.asarray(result.status) == 0)
    )
    measured = outcomes(finals, starts, data)
    P_final = neuron_sizes(finals)  # [lanes, d]
    P_start = neuron_sizes(starts)

    # The ε = 0 run is the plain full-network run: IMP's dense round (same init, same batches).
    plain_lane = {
        lane["seed"]: k for k, lane in enumerate(lanes) if lane["perturbation"] == labels[0]
    }
    reproduction = compare_runs(finals, result, plain_lane, seeds, data)
    checks["eps0_run_reproduces_dense_run"] = (
        reproduction["max_relative_W_gap"] <= MAX_GAP
        and reproduction["min_spearman_P"] >= 0.99
        and reproduction["max_test_accuracy_gap"] <= 0.01
    )

    rows, runs = [], []
    for i, seed in enumerate(seeds):
        P_plain = P_final[plain_lane[seed]]
        for j, s in enumerate(targets):
            mask = jax.tree.map(lambda a: np.asarray(a)[i, j, -1], masks)
            ticket = kept_by_imp(mask.W)
            pruned_in, pruned_out = pruned_per_neuron(mask)
            kept_weights = (dim - pruned_in) + (2 - pruned_out)
            ticket_acc = float(np.asarray(result.test_accuracy)[i, j, -1])
            for k, lane in enumerate(lanes):
                if lane["seed"] != seed:
                    continue
                unperturbed = lane["perturbation"] == labels[0]
                if not unperturbed and lane["j"] != j:
                    continue
                arm = PLAIN if unperturbed else lane["arm"]
                touched = (
                    np.zeros(width, int)
                    if unperturbed
                    else np.asarray(sets[(seed, j, arm)].W).sum(axis=1)
                    + np.asarray(sets[(seed, j, arm)].V).sum(axis=1)
                )
                cos0 = measured["cos_delta_0"][k]
                run = {
                    "seed": seed,
                    "target_sparsity": s,
                    "arm": arm,
                    "perturbation": lane["perturbation"],
                    "eps": lane["eps"],
                    "perturbed_weights": int(touched.sum()),
                    "constant_pixel_share": constant_pixel_share(
                        None if unperturbed else sets[(seed, j, arm)], constant
                    ),
                    "ticket_neurons": int(ticket.sum()),
                    **run_metrics(
                        P_final[k],
                        P_plain,
                        ticket,
                        kept_weights,
                        cos0,
                        P_start[k],
                        P_start[plain_lane[seed]],
                    ),
                    "test_accuracy": float(measured["test_accuracy"][k]),
                    "train_accuracy": float(measured["train_accuracy"][k]),
                    "final_loss": float(measured["final_loss"][k]),
                    "ticket_test_accuracy": ticket_acc,
                }
                runs.append(run)
                for q in range(width):
                    rows.append(
                        {
                            "seed": seed,
                            "target_sparsity": s,
                            "arm": arm,
                            "perturbation": lane["perturbation"],
                            "neuron": q,
                            "ticket": int(ticket[q]),
                            "kept_weights": int(kept_weights[q]),
                            "perturbed_weights": int(touched[q]),
                            "cos_delta_0": float(f"{cos0[q]:.6g}"),
                            "P_0": float(f"{P_start[k, q]:.6g}"),
                            "P_final": float(f"{P_final[k, q]:.7g}"),
                        }
                    )
    checks["shares_in_unit_interval"] = all(0 <= r["ticket_share"] <= 1 for r in runs)
    summary = summarise(runs, targets, labels)
    clock.lap("measures")
    for cell in summary:
        if "reading" not in cell:
            continue
        rest, tick = cell["rest"], cell["ticket"]
        print(
            f"s={cell['target_sparsity']:.0%} {cell['perturbation']:>8}: share of ΣP in ticket "
            f"rest {rest['ticket_share']['mean']:.3f} / ticket {tick['ticket_share']['mean']:.3f}"
            f", test acc {rest['test_accuracy']['mean']:.3f} / {tick['test_accuracy']['mean']:.3f}"
            f" → {cell['reading']}"
        )

    plot(out, summary, targets, labels, dataset, n, width, seeds)
    clock.lap("plotting")
    return _paper.write_outputs(
        out,
        NAME,
        rows,
        {
            "experiment": "the loss-landscape critique's perturbation test of IMP tickets",
            "settings": _paper.settings(
                args,
                width=width,
                samples=n,
                seeds=seeds,
                sigma=args.sigma,
                rounds=args.rounds,
                rewind_step=0,
                steps=steps,
                sparsities=targets,
                perturbations=[{"label": m[0], "eps": m[1], "reinit": m[2]} for m in mode_list],
                prunable_weights=width * (dim + 2),
                ticket_neurons="kept_by_imp: surviving share of the row of W ≥ that of W",
                reading_thresholds={"retained": RETAINED, "arm_gap": ARM_GAP},
                dataset_name=dataset.describe(),
            ),
            "predictions": PREDICTIONS,
            "eps0_run_vs_dense_run": reproduction,
            "summary": summary,
            "runs": runs,
        },
        checks,
        clock,
    )


def plot(out: Path, summary, targets, labels, dataset, n, width, seeds) -> None:
    """Ticket share, reshuffling, the start's size as forecast and test accuracy against the
    perturbation, per sparsity (seed means ± standard deviations)."""
    fig, axes = _paper.figure(4, width=3.5)
    x = np.arange(len(labels))
    panels = (
        ("ticket_share", "share of ΣP_i in the ticket's neurons"),
        ("spearman_P_vs_unperturbed", "Spearman(P_i, P_i unperturbed)"),
        ("spearman_P_P0", "Spearman(P_i, P_i(0) of the start)"),
        ("test_accuracy", "test accuracy of the full network"),
    )
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for ax, (key, title) in zip(axes, panels):
        for c, s in enumerate(targets):
            cells = [cell for cell in summary if cell["target_sparsity"] == s]
            base = cells[0][PLAIN][key]
            for arm, style in zip(ARMS, ("-o", "--s")):
                y = [base["mean"]] + [cell[arm][key]["mean"] for cell in cells[1:]]
                e = [base["std"]] + [cell[arm][key]["std"] for cell in cells[1:]]
                ax.errorbar(
                    x,
                    y,
                    yerr=e,
                    fmt=style,
                    color=colours[c % len(colours)],
                    ms=4,
                    capsize=2,
                    label=f"s = {s:.0%}, {arm} perturbed",
                )
            if key == "ticket_share":
                ax.axhline(cells[0][PLAIN]["chance_share"]["mean"], color=colours[c], lw=0.6)
        ax.set_xticks(x, [lab.replace("eps=", "ε=") for lab in labels], fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=6)
    fig.suptitle(
        f"{_paper.run_label(dataset, n, width)}, {len(seeds)} seeds: perturbing the pruned-away "
        "weights (solid) or as many kept ones (dashed) at t = 0; thin lines: chance share |T|/d",
        fontsize=8,
    )
    _paper.save(fig, out / f"{NAME}.png")


if __name__ == "__main__":
    sys.exit(main())

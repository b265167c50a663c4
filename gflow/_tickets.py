"""Predicting lottery tickets at initialisation or early in training (docs/theory.md §4, §6; paper
§5).

The race (docs/theory.md §4–§5) says that within a group of neurons, P_i grows like exp(γ_i t) with
γ_i ∝ cos δ_i, so a neuron's early alignment to its cell's target should rank its final norm.
This module scores neurons with quantities available at t = 0 or early t, and measures how
well each score ranks the final P_i (Spearman correlation with a permutation p-value) and
separates the neurons iterative magnitude pruning keeps (AUC, the Mann–Whitney statistic).

Scores (`neuron_scores`):
    cos_delta_t0: cos ∠(w_i(0), T_κ̂(g_i(0))), κ̂_i the alignment v_i *will* reach, predicted
        from the data as sign Σ_s a_i(s) ỹ_s (Appendix B.1); the paper's §5 "computing the
        alignment" at initialisation, when v_i is still random.
    cos_delta_t0_current_kappa: the same with κ from the current (random) v_i(0), i.e. the
        recorded observable ``cos_target`` at t = 0.
    cos_delta_early: ``cos_target`` at an early time (v_i has aligned by then).
    unlocking_rate_early: γ_i = √2 ‖Σ_{s∈E_i} ỹ_s x_s‖/N · cos δ_i at the early time (docs/theory.md
    §4).
    magnitude_t0: P_i(0) = ‖w_i(0)‖ ‖v_i(0)‖.
    snip_t0: Σ over the neuron's parameters of |θ ∂L/∂θ| at t = 0 (SNIP, Lee et al. 2019).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._network import Params, gating_pattern, loss
from ._observables import (
    Observables,
    TrainingData,
    outgoing_alignment,
    safe_cosine,
    small_init_unlocking_rate,
    target_directions,
)

# --------------------------------------------------------------------------- rank statistics


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n of ``x`` (float64), ties sharing the average of the ranks they span.

    Example:
        >>> average_ranks([10, 20, 20, 5]).tolist()
        [2.0, 3.5, 3.5, 1.0]
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if np.any(np.isnan(x)):
        raise ValueError("average_ranks: values contain NaN; rank statistics need ordered values.")
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Boundaries of runs of equal values.
    starts = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
    run_id = np.cumsum(starts) - 1
    positions = np.arange(1, x.size + 1, dtype=np.float64)
    run_sum = np.bincount(run_id, weights=positions)
    run_len = np.bincount(run_id)
    ranks = np.empty_like(positions)
    ranks[order] = (run_sum / run_len)[run_id]
    return ranks


def _check_pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(
            f"rank correlation needs two arrays of equal length; got {x.size} and {y.size}."
        )
    if x.size < 3:
        raise ValueError(f"rank correlation needs at least 3 pairs; got {x.size}.")
    return x, y


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / denom) if denom > 0 else float("nan")


def spearman(x, y) -> float:
    """Spearman's ρ: the Pearson correlation of the average ranks (ties handled); NaN if either
    input is constant.

    Example:
        >>> round(spearman([1, 2, 3, 4], [1, 3, 2, 4]), 3)
        0.8
    """
    x, y = _check_pair(x, y)
    return _pearson(average_ranks(x), average_ranks(y))


class RankCorrelation(NamedTuple):
    """Spearman's ρ with a two-sided permutation p-value.

    ``p_value = (1 + #{π : |ρ_π| ≥ |ρ|}) / (1 + permutations)``, ρ_π computed with y permuted;
    never 0, and exact in distribution for exchangeable data (Phipson & Smyth 2010).
    """

    rho: float
    p_value: float
    n: int
    permutations: int


def spearman_test(x, y, *, permutations: int = 9999, seed: int = 0) -> RankCorrelation:
    """Spearman's ρ of ``x`` and ``y`` and its permutation p-value (`RankCorrelation`)."""
    if not (isinstance(permutations, (int, np.integer)) and permutations > 0):
        raise ValueError(f"permutations must be a positive integer; got {permutations!r}.")
    x, y = _check_pair(x, y)
    rx, ry = average_ranks(x), average_ranks(y)
    rho = _pearson(rx, ry)
    if np.isnan(rho):
        return RankCorrelation(rho, float("nan"), x.size, int(permutations))
    rng = np.random.default_rng(seed)
    cx = rx - rx.mean()
    cy = ry - ry.mean()
    scale = np.sqrt(np.sum(cx * cx) * np.sum(cy * cy))
    exceed = 0
    chunk = 1000
    for start in range(0, permutations, chunk):
        m = min(chunk, permutations - start)
        perms = rng.permuted(np.broadcast_to(cy, (m, cy.size)), axis=1)
        rho_perm = perms @ cx / scale
        exceed += int(np.sum(np.abs(rho_perm) >= abs(rho) - 1e-12))
    return RankCorrelation(rho, (1 + exceed) / (1 + permutations), int(x.size), int(permutations))


def mann_whitney_auc(scores, positive) -> float:
    """AUC = P(score of a random positive > score of a random negative) + ½ P(tie).

    Computed from the Mann–Whitney statistic U = R₊ − n₊(n₊+1)/2 (R₊: sum of the positives'
    average ranks): AUC = U / (n₊ n₋). NaN when either class is empty.

    Example:
        >>> mann_whitney_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
        0.75
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos = np.asarray(positive, dtype=bool).reshape(-1)
    if s.shape != pos.shape:
        raise ValueError(f"scores and positive labels differ in length: {s.size} vs {pos.size}.")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(s)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


# --------------------------------------------------------------------------- scores


def predicted_alignment(params: Params, data: TrainingData) -> jax.Array:
    """κ̂_i = sign Σ_s a_i(s) ỹ_s, the alignment v_i converges to in phase 1 (docs/theory.md §3,
    App. B.1).

    Neurons with Σ_s a_i(s) ỹ_s = 0 (e.g. inactive on every sample) keep their current κ.
    """
    a = jax.nn.relu(data.x @ params.W.T + params.b[None, :])
    drive = data.signed_labels @ a
    current = outgoing_alignment(params.V)
    return jnp.where(drive > 0, 1, jnp.where(drive < 0, -1, current)).astype(jnp.int8)


def alignment_to_cell_target(params: Params, data: TrainingData, kappa: jax.Array) -> jax.Array:
    """cos δ_i = cos ∠(w_i, T_κ_i(g_i)) for the given alignments κ (docs/theory.md §3–§4),
    ``[d]``."""
    gates = gating_pattern(params, data.x)
    return safe_cosine(params.W, target_directions(gates, kappa, data))


def snip_saliency(params: Params, data: TrainingData) -> jax.Array:
    """SNIP per neuron: Σ_{θ ∈ (w_i, b_i, v_i)} |θ ∂L/∂θ|, ``[d]`` (full-batch gradient)."""
    g = jax.grad(loss)(params, data.x, data.y)
    return (
        jnp.sum(jnp.abs(params.W * g.W), axis=1)
        + jnp.abs(params.b * g.b)
        + jnp.sum(jnp.abs(params.V * g.V), axis=1)
    )


def neuron_scores(
    params0: Params, obs_early: Observables, data: TrainingData
) -> dict[str, np.ndarray]:
    """Per-neuron predictors of the final P_i (module docstring), each ``[d]`` float64.

    Args:
        params0: the initial parameters.
        obs_early: `Observables` recorded at the chosen early time (no time axis).
        data: `TrainingData`.
    """
    return {
        k: np.asarray(v, dtype=np.float64) for k, v in _scores(params0, obs_early, data).items()
    }


@jax.jit
def _scores(params0: Params, obs_early: Observables, data: TrainingData) -> dict:
    kappa_hat = predicted_alignment(params0, data)
    current = outgoing_alignment(params0.V)
    return {
        "cos_delta_t0": alignment_to_cell_target(params0, data, kappa_hat),
        "cos_delta_t0_current_kappa": alignment_to_cell_target(params0, data, current),
        "cos_delta_early": obs_early.cos_target,
        "unlocking_rate_early": small_init_unlocking_rate(obs_early),
        "magnitude_t0": jnp.linalg.norm(params0.W, axis=1) * jnp.linalg.norm(params0.V, axis=1),
        "snip_t0": snip_saliency(params0, data),
    }


class ScoreQuality(NamedTuple):
    """How well one score predicts the outcome of training.

    Attributes:
        spearman_log_P: `RankCorrelation` of the score with log final P_i.
        auc_kept: AUC of the score for the neurons IMP keeps (NaN without IMP masks).
    """

    spearman_log_P: RankCorrelation
    auc_kept: float


def kept_by_imp(mask_W: np.ndarray) -> np.ndarray:
    """Neurons IMP keeps: those that lost at most the network's average share of incoming weights.

    A neuron counts as kept when the surviving fraction of its row of W is at least the surviving
    fraction of W overall; with magnitude pruning this splits winners (large ‖w_i‖, few pruned
    weights) from neurons that stayed near the init scale.
    """
    m = np.asarray(mask_W, dtype=bool)
    return m.mean(axis=1) >= m.mean()


def score_quality(
    scores: dict, final_P, *, imp_mask_W=None, permutations: int = 9999, seed: int = 0
) -> dict[str, ScoreQuality]:
    """Spearman(score, log P_final) with a permutation p-value, and AUC for IMP-kept neurons.

    ``final_P`` must be positive (log); zero entries (dead neurons) are clipped to the
    smallest positive value, which only ties them at the bottom of the ranking.
    """
    P = np.asarray(final_P, dtype=np.float64)
    positive = P[P > 0]
    floor = positive.min() if positive.size else 1.0
    log_P = np.log(np.maximum(P, floor))
    kept = None if imp_mask_W is None else kept_by_imp(imp_mask_W)
    return {
        name: ScoreQuality(
            spearman_log_P=spearman_test(s, log_P, permutations=permutations, seed=seed),
            auc_kept=float("nan") if kept is None else mann_whitney_auc(s, kept),
        )
        for name, s in scores.items()
    }

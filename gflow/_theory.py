"""The paper's claims as predictions, and checks that compare them with a simulation
(docs/theory.md §2–§5).

Predictions are pure functions of the parameters at one time (or of recorded `Observables`);
checks take a float64 gradient-flow `Trajectory` and return `Check` records
``(name, predicted, measured, rel_error, tolerance, passed)``. A check passes when
``rel_error <= tolerance``; each record says in ``detail`` what was compared.

Phases (docs/theory.md §3–§5):

* phase 1, alignment: ``φ_i`` → −π/4 or 3π/4 by the sign of ``Σ_s a_i(s) ỹ_s`` (Appendix B);
  ``ŵ_i`` turns to the target ``T_κ(g_i)`` of its cell and settles in a stable cell (Thm 3.6);
* phase 2, unlocking: ``P_i = ‖w_i‖‖v_i‖`` grows like ``exp(γ_i t)``,
  ``γ_i = (√2/N)‖Σ_{s∈E_i} ỹ_s x_s‖ cos δ_i`` (Thm 3.11);
* phase 3, racing: in a group (same κ, same cell) ``(d log P_i/dt)/cos δ_i`` is shared (Conj. 3.12).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._cells import is_stable, map_patterns
from ._flow import vector_field
from ._network import Params, balance, gating_pattern, logits, preactivations, residuals
from ._observables import (
    TrainingData,
    balance_drift,
    error_vectors,
    outgoing_alignment,
    safe_cosine,
    safe_norm,
    target_directions,
)
from ._race import loss_drop_time

KAPPA_ANGLE = {1: -math.pi / 4, -1: 3 * math.pi / 4}


# --------------------------------------------------------------------------- phase 1


def outgoing_drive(params: Params, data: TrainingData) -> jax.Array:
    """``Σ_s a_i(s) ỹ_s`` per neuron ``[d]``: the sign of the outgoing weights' pull (Appendix B).

    While ``p ≈ (½, ½)``, ``v̇_i ≈ (1/2N)(Σ_s a_i(s) ỹ_s)(1, −1)`` (docs/theory.md §3).
    """
    a = jax.nn.relu(preactivations(params, data.x))
    return data.signed_labels @ a


def predicted_kappa(params: Params, data: TrainingData) -> jax.Array:
    """κ_i = +1 if ``Σ_s a_i(s) ỹ_s > 0`` (v_i turns to predict class 1), else −1 (``int8 [d]``)."""
    return jnp.where(outgoing_drive(params, data) > 0, 1, -1).astype(jnp.int8)


def limit_angle(params: Params, data: TrainingData) -> jax.Array:
    """Predicted limit of φ_i = atan2(v_i2, v_i1): −π/4 if ``Σ_s a_i(s) ỹ_s > 0`` else 3π/4.

    docs/theory.md §3, paper Appendix B (Theorem B.1): the residuals ``r_s`` all point along
    ``±(1, −1)``, so ``v_i`` moves along that line only and its angle tends to one end.
    """
    kappa = predicted_kappa(params, data)
    return jnp.where(kappa > 0, KAPPA_ANGLE[1], KAPPA_ANGLE[-1]).astype(params.V.dtype)


def wrapped_angle(a, b):
    """|a − b| wrapped to [0, π] (angles in radians)."""
    d = jnp.mod(jnp.asarray(a) - jnp.asarray(b) + jnp.pi, 2 * jnp.pi) - jnp.pi
    return jnp.abs(d)


def current_targets(params: Params, data: TrainingData, kappa=None) -> jax.Array:
    """T_κ(g_i) for each neuron's current gating pattern, ``[d, D]`` (docs/theory.md §3, Lemma 3.4).

    ``kappa`` defaults to the current outgoing alignment (sign of ``v_i1 − v_i2``).
    """
    kappa = outgoing_alignment(params.V) if kappa is None else jnp.asarray(kappa)
    return target_directions(gating_pattern(params, data.x), kappa, data)


class StableCellSearch(NamedTuple):
    """Where iterating ``g ← gate(T_κ(g))`` leads from each neuron's pattern.

    Attributes:
        patterns: ``bool [d, N]``, the last pattern reached.
        targets: ``[d, D]``, ``T_κ`` of that pattern.
        fixed: ``bool [d]``, the pattern is a fixed point (a stable cell).
        two_cycle: ``bool [d]``, the iteration ended on a 2-cycle ``g ↦ g' ↦ g``, ``g' ≠ g``.
        iterations: ``int [d]``, steps until the fixed point or 2-cycle was detected.
    """

    patterns: jax.Array
    targets: jax.Array
    fixed: jax.Array
    two_cycle: jax.Array
    iterations: jax.Array


@functools.partial(jax.jit, static_argnames=("max_iterations",))
def iterate_target_map(
    patterns: jax.Array, kappa: jax.Array, data: TrainingData, *, max_iterations: int = 100
) -> StableCellSearch:
    """Iterate the target map from ``patterns [d, N]`` until each is fixed or on a 2-cycle.

    The discrete counterpart of Theorem 3.6 (docs/theory.md §3): under phase-1 dynamics a neuron
    moves
    cell to cell towards its cell's target until it enters a stable cell. Neurons that settle
    stop changing; the loop ends when all have settled or after ``max_iterations``.
    """
    kappa = jnp.broadcast_to(jnp.asarray(kappa), patterns.shape[:1])

    def cond(state):
        _, _, done, _, k = state
        return (k < max_iterations) & ~jnp.all(done)

    def body(state):
        prev, cur, done, steps, k = state
        nxt = map_patterns(cur, kappa, data)
        fixed = jnp.all(nxt == cur, axis=-1)
        cycle = jnp.all(nxt == prev, axis=-1) & ~fixed & (k > 0)
        settled = fixed | cycle
        keep = done[:, None]
        new_cur = jnp.where(keep, cur, jnp.where(cycle[:, None], cur, nxt))
        steps = jnp.where(done, steps, k + 1)
        return cur, new_cur, done | settled, steps, k + 1

    d = patterns.shape[0]
    state = (patterns, patterns, jnp.zeros((d,), bool), jnp.zeros((d,), jnp.int32), jnp.int32(0))
    _, final, _, steps, _ = jax.lax.while_loop(cond, body, state)
    nxt = map_patterns(final, kappa, data)
    fixed = jnp.all(nxt == final, axis=-1)
    two_cycle = ~fixed & jnp.all(map_patterns(nxt, kappa, data) == final, axis=-1)
    targets = target_directions(final.T, kappa, data)
    return StableCellSearch(
        patterns=final, targets=targets, fixed=fixed, two_cycle=two_cycle, iterations=steps
    )


def second_order_targets(params: Params, data: TrainingData, kappa=None) -> jax.Array:
    """Target directions corrected to first order in the network output (paper Appendix C.3).

    Derivation. Write ``u_s = o_1(x_s) − o_2(x_s)``; then ``p_1(x_s) = σ(u_s)`` and, for both
    classes, ``r_s = p(x_s) − y_s = ρ_s (1, −1)`` with ``ρ_s = p_1(x_s) − 1[c_s = 1]``.
    Expanding ``σ(u) = ½ + u/4 + O(u³)`` (the quadratic term vanishes, so the error is third
    order) gives ``ρ_s ≈ −ỹ_s/2 + u_s/4``. With ``v̂_i`` aligned (φ_i = −π/4 for κ_i = +1,
    3π/4 for κ_i = −1) ``v̂_i·(1, −1) = κ_i √2``, hence

        e_i = −(1/N) Σ_s g_i(s) (v̂_i·r_s) x_s ≈ (κ_i / (√2 N)) Σ_{s∈E_i} (ỹ_s − u_s/2) x_s.

    At zeroth order (``u = 0``) this is Lemma 3.4's ``κ_i/(√2N) Σ_{E_i} ỹ_s x_s`` and its direction
    is ``T_κ(g_i)``. When the neuron's own group G dominates the output on E_i,
    ``u_s ≈ κ λ ŵ·x_s`` with ``λ = √2 Σ_{j∈G} P_j``, and the correction is
    ``−(κλ/2) C_E ŵ`` with ``C_E = Σ_{s∈E_i} x_s x_sᵀ``: the first-order target rotated by the
    second moments of the effective dataset, as the paper states.

    Returns ``[d, D]`` unit vectors (zero rows where the corrected sum vanishes); with outputs
    → 0 they tend to `current_targets`.
    """
    kappa = outgoing_alignment(params.V) if kappa is None else jnp.asarray(kappa)
    o = logits(params, data.x)
    u = o[:, 0] - o[:, 1]
    gates = gating_pattern(params, data.x).astype(data.x.dtype)
    weights = gates * (data.signed_labels - 0.5 * u)[:, None]  # [N, d]
    m = kappa[:, None].astype(data.x.dtype) * (weights.T @ data.x)
    n = safe_norm(m)
    return m / jnp.where(n > 0, n, 1.0)[:, None]


def steady_second_order_target(
    signed_sum: np.ndarray, x_effective: np.ndarray, group_rate: float
) -> np.ndarray:
    """The steady direction of Appendix C.3: the unit ŵ with ``(μ I + (Λ/2) C_E) ŵ = κ S(g)``.

    ``signed_sum`` is ``κ S(g) = κ Σ_{s∈E} ỹ_s x_s`` ``[D]``, ``x_effective`` the inputs of E
    ``[|E|, D]`` (``C_E = Σ_{s∈E} x_s x_sᵀ``) and ``group_rate`` is ``Λ = √2 Σ_{j∈G} P_j``
    (docs/theory.md §3). With ``C_E = Σ_k s_k² q_k q_kᵀ`` the norm of
    ``(μ I + (Λ/2) C_E)⁻¹ κS`` falls strictly from ∞ (or its μ → 0 limit) to 0 as μ grows, so
    ``μ > 0`` is found by bisection in log μ. Returns NaNs when no μ > 0 gives a unit vector
    (the fixed direction then needs μ <= 0) and ``κS/‖κS‖`` when ``Λ = 0``.

    Example:
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0]])
        >>> w = steady_second_order_target(np.array([1.0, 1.0]), x, 0.0)
        >>> bool(np.allclose(w, np.array([1.0, 1.0]) / np.sqrt(2.0)))
        True
    """
    S = np.asarray(signed_sum, np.float64)
    norm_s = float(np.linalg.norm(S))
    if norm_s == 0.0:
        return np.full_like(S, np.nan)
    if group_rate == 0.0:
        return S / norm_s
    _, sv, qt = np.linalg.svd(np.asarray(x_effective, np.float64), full_matrices=False)
    alpha = qt @ S
    perp = S - qt.T @ alpha  # the part of S outside C_E's range (rounding counts as none)
    if np.linalg.norm(perp) <= 1e-10 * norm_s:
        perp = np.zeros_like(S)
    perp2 = float(perp @ perp)
    curv = 0.5 * group_rate * sv**2

    def excess(mu: float) -> float:
        return float(np.sum(alpha**2 / (mu + curv) ** 2) + perp2 / mu**2) - 1.0

    lo, hi = 1e-12 * norm_s, norm_s  # excess(hi) <= 0 since every factor 1/(μ + c) <= 1/μ
    if excess(lo) <= 0.0:
        return np.full_like(S, np.nan)
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if excess(mid) > 0.0 else (lo, mid)
        if hi / lo < 1 + 1e-15:
            break
    mu = math.sqrt(lo * hi)
    w = qt.T @ (alpha / (mu + curv)) + perp / mu
    return w / np.linalg.norm(w)


def steady_second_order_targets(params: Params, data: TrainingData) -> np.ndarray:
    """`steady_second_order_target` for every neuron, ``[d, D]`` (NaN rows for dead neurons).

    The group G of neuron i is the neurons with its κ and its gating pattern (docs/theory.md
    §3); ``Λ = √2 Σ_{j∈G} P_j`` (the group's own output ``u_s ≈ κ Λ ŵ·x_s`` on E).
    """
    W, V = np.asarray(params.W, np.float64), np.asarray(params.V, np.float64)
    x = np.asarray(data.x, np.float64)
    ytil = np.asarray(data.signed_labels, np.float64)
    gates = np.asarray(gating_pattern(params, data.x)).T  # [d, N]
    kappa = np.asarray(outgoing_alignment(params.V)).astype(np.int64)
    P = np.linalg.norm(W, axis=1) * np.linalg.norm(V, axis=1)
    out = np.full(W.shape, np.nan)
    keys = {}
    for i in range(W.shape[0]):
        if gates[i].any():
            keys.setdefault((int(kappa[i]), gates[i].tobytes()), []).append(i)
    for (k, _), members in keys.items():
        e_mask = gates[members[0]]
        S = k * (ytil[e_mask] @ x[e_mask])
        lam = math.sqrt(2.0) * float(P[members].sum())
        out[members] = steady_second_order_target(S, x[e_mask], lam)
    return out


def angle_to(directions: jax.Array, targets: jax.Array) -> jax.Array:
    """∠(w_i, target_i) in radians per row (π/2 for a zero target)."""
    return jnp.arccos(jnp.clip(safe_cosine(directions, targets), -1.0, 1.0))


def with_bias_input(data: TrainingData) -> TrainingData:
    """The data with a constant 1 appended to every input: ``x̃_s = (x_s, 1)``.

    A neuron's ``(w_i, b_i)`` acts on ``x̃`` as a bias-free weight ``w̃_i``, so cells, targets and
    the stability test of docs/theory.md §3 (stated for b = 0) carry over to trained biases:
    ``gate(w̃)_s = 1[w_i·x_s + b_i > 0]`` and ``T̃_κ(g) ∝ κ Σ_{g(s)=1} ỹ_s x̃_s``.
    """

    def augment(x):
        return jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)

    return data._replace(x=augment(data.x), x_test=augment(data.x_test))


@jax.jit
def stability_of_neurons(params: Params, data: TrainingData):
    """For each neuron's current gating pattern g_i and current κ_i (docs/theory.md §3):

    ``(stable [d], two_cycle [d], stable_with_bias [d])``: ``gate(T_κ(g_i)) == g_i`` with b = 0
    cells; ``g_i`` on a 2-cycle of that map instead; and the same test in the augmented space
    of `with_bias_input`, which accounts for the neuron's trained bias.
    """
    patterns = gating_pattern(params, data.x).T
    kappa = outgoing_alignment(params.V)
    mapped = map_patterns(patterns, kappa, data)
    fixed = jnp.all(mapped == patterns, axis=-1)
    cycle = ~fixed & jnp.all(map_patterns(mapped, kappa, data) == patterns, axis=-1)
    return fixed, cycle, is_stable(patterns, kappa, with_bias_input(data))


# --------------------------------------------------------------------------- Lemma 3.9, dP/dt


class SpeedIdentities(NamedTuple):
    """Speeds from the vector field (measured) and from the closed forms (predicted), per neuron.

    norm_speed: d‖w_i‖/dt = ŵ_i·ẇ_i  vs  ‖v_i‖‖e_i‖cos δ_i.
    angular_speed: |dŵ_i/dt| = ‖ẇ_i − (ŵ_i·ẇ_i)ŵ_i‖/‖w_i‖  vs  (‖v_i‖/‖w_i‖)‖e_i‖ sin δ_i.
    ratio: angular/norm speed  vs  tan δ_i/‖w_i‖ (Lemma 3.9, docs/theory.md §2).
    dP: dP_i/dt = ‖v_i‖ d‖w_i‖/dt + ‖w_i‖ d‖v_i‖/dt  vs
        (‖w_i‖² + ‖v_i‖²)(e_i·ŵ_i) + ‖w_i‖ b_i β_i (docs/theory.md §4).
    v_norm_speed: d‖v_i‖/dt = v̂_i·v̇_i  vs  θ_i·ẽ_i = ‖w_i‖‖e_i‖cos δ_i + b_i β_i (eq. 2.1).
    v_angular_speed: |dv̂_i/dt|  vs  (|A_i|/‖v_i‖)|sin(φ_i + π/4)|, A_i = −(√2/N) Σ_s a_i(s) ρ_s
        (Lemma 3.9, outgoing half: v̇_i = A_i (1, −1)/√2, docs/theory.md §2).
    Each of these is a pair ``(measured [d], predicted [d])``. Scales to compare errors on:
    speed_scale = ‖v_i‖‖e_i‖ (bounds both speeds of Lemma 3.9, the angular one times ‖w_i‖);
    dP_scale = (‖w_i‖² + ‖v_i‖²)‖e_i‖ + ‖w_i‖|b_i β_i|; v_scale = |A_i| + ‖θ_i‖‖ẽ_i‖ (bounds
    both outgoing speeds, the angular one times ‖v_i‖).
    """

    norm_speed: tuple
    angular_speed: tuple
    ratio: tuple
    dP: tuple
    speed_scale: jax.Array
    dP_scale: jax.Array
    v_norm_speed: tuple
    v_angular_speed: tuple
    v_scale: jax.Array


def speed_identities(params: Params, data: TrainingData) -> SpeedIdentities:
    """Lemma 3.9 and the dP/dt identity checked against `gflow.vector_field` at one state.

    ``sin δ_i`` is computed as ``‖e_i − (e_i·ŵ_i)ŵ_i‖/‖e_i‖`` (not ``√(1 − cos²)``), so both sides
    agree to rounding error even when δ_i is tiny.
    """
    f = vector_field(0.0, params, data)
    w_norm = safe_norm(params.W)
    v_norm = safe_norm(params.V)
    w_hat = params.W / w_norm[:, None]
    v_hat = params.V / v_norm[:, None]
    norm_speed = jnp.sum(w_hat * f.W, axis=1)
    angular = safe_norm(f.W - norm_speed[:, None] * w_hat) / w_norm
    e = error_vectors(params, data)
    e_par = jnp.sum(e * w_hat, axis=1)  # ‖e‖ cos δ
    e_perp = safe_norm(e - e_par[:, None] * w_hat)  # ‖e‖ sin δ
    pred_norm = v_norm * e_par
    pred_angular = v_norm / w_norm * e_perp
    n = data.x.shape[0]
    gates = gating_pattern(params, data.x).astype(data.x.dtype)
    beta = -jnp.sum(gates * (residuals(params, data.x, data.y) @ v_hat.T), axis=0) / n
    dv_norm = jnp.sum(v_hat * f.V, axis=1)
    dP = v_norm * norm_speed + w_norm * dv_norm
    bias_term = w_norm * params.b * beta
    pred_dP = (w_norm**2 + v_norm**2) * e_par + bias_term
    e_norm = safe_norm(e)
    # outgoing half: r_s = ρ_s (1, −1), so v̇_i = A_i u with u = (1, −1)/√2
    r = residuals(params, data.x, data.y)
    rho = 0.5 * (r[:, 0] - r[:, 1])
    a = jax.nn.relu(preactivations(params, data.x))  # [N, d]
    A = -math.sqrt(2.0) / n * (rho @ a)
    sin_tilt = (v_hat[:, 0] + v_hat[:, 1]) / math.sqrt(2.0)  # sin(φ_i + π/4)
    v_angular = safe_norm(f.V - dv_norm[:, None] * v_hat) / v_norm
    theta_e = jnp.sum(params.W * e, axis=1) + params.b * beta  # θ_i·ẽ_i
    theta_norm = jnp.sqrt(w_norm**2 + params.b**2)
    return SpeedIdentities(
        norm_speed=(norm_speed, pred_norm),
        angular_speed=(angular, pred_angular),
        ratio=(angular / norm_speed, (e_perp / e_par) / w_norm),
        dP=(dP, pred_dP),
        speed_scale=v_norm * e_norm,
        dP_scale=(w_norm**2 + v_norm**2) * e_norm + jnp.abs(bias_term),
        v_norm_speed=(dv_norm, theta_e),
        v_angular_speed=(v_angular, jnp.abs(A) * jnp.abs(sin_tilt) / v_norm),
        v_scale=jnp.abs(A) + theta_norm * jnp.sqrt(e_norm**2 + beta**2),
    )


# --------------------------------------------------------------------------- phase 2


class UnlockingRates(NamedTuple):
    """Growth rates of P_i at one state, ``[d]`` each (docs/theory.md §4).

    small_init: γ_i = (√2/N)‖Σ_{s∈E_i} ỹ_s x_s‖ cos δ_i, δ_i against the current cell's target.
    q_form: √(4P_i² + Q_i²) ‖e_i‖ cos δ_i / P_i, exact for d log P_i/dt when b_i = 0.
    augmented_exact: the same identity for the augmented weights ``w̃_i = (w_i, b_i)`` and inputs
        ``x̃_s = (x_s, 1)``: with ``P̃_i = ‖w̃_i‖‖v_i‖``, ``ẽ_i = (e_i, β_i)`` and ``δ̃_i =
        ∠(w̃_i, ẽ_i)``,
        ``d log P̃_i/dt = √(4P̃_i² + Q_i²) ‖ẽ_i‖ cos δ̃_i / P̃_i`` holds exactly whatever b_i
        (Q_i = ‖w̃_i‖² − ‖v_i‖² already counts b_i²).
    augmented_small_init: γ̃_i = (√2/N)‖Σ_{s∈E_i} ỹ_s x̃_s‖ cos ∠(w̃_i, κ_i Σ_{E_i} ỹ_s x̃_s).
    P, P_augmented: ‖w_i‖‖v_i‖ and ‖w̃_i‖‖v_i‖.
    """

    small_init: jax.Array
    q_form: jax.Array
    augmented_exact: jax.Array
    augmented_small_init: jax.Array
    P: jax.Array
    P_augmented: jax.Array


def unlocking_rates(params: Params, data: TrainingData) -> UnlockingRates:
    """All forms of the unlocking rate of docs/theory.md §4 at one state (see `UnlockingRates`).

    Why the augmented form: the bias obeys ``ḃ_i = ‖v_i‖ β_i`` with
    ``β_i = −(1/N) Σ_s g_i(s)(v̂_i·r_s)``, so it grows at the same exponential rate as w_i and
    ``dP_i/dt`` picks up ``‖w_i‖ b_i β_i`` (docs/theory.md §4). Appending 1 to every input turns
    the bias
    into one more weight, and the b = 0 identity becomes exact for ``(w_i, b_i)``.
    """
    n = data.x.shape[0]
    dtype = data.x.dtype
    gates = gating_pattern(params, data.x)
    g = gates.astype(dtype)
    kappa = outgoing_alignment(params.V)
    w_norm = safe_norm(params.W)
    v_norm = safe_norm(params.V)
    w_tilde = jnp.concatenate([params.W, params.b[:, None]], axis=1)
    wt_norm = safe_norm(w_tilde)
    P = w_norm * v_norm
    Pt = wt_norm * v_norm
    Q = wt_norm**2 - v_norm**2
    e = error_vectors(params, data)
    v_hat = params.V / v_norm[:, None]
    beta = -jnp.sum(g * (residuals(params, data.x, data.y) @ v_hat.T), axis=0) / n
    e_tilde = jnp.concatenate([e, beta[:, None]], axis=1)
    x_tilde = jnp.concatenate([data.x, jnp.ones((n, 1), dtype)], axis=1)
    signed = (g * data.signed_labels[:, None]).T @ x_tilde  # Σ_{E_i} ỹ_s x̃_s, [d, D+1]
    target = kappa[:, None].astype(dtype) * signed[:, :-1]
    target_tilde = kappa[:, None].astype(dtype) * signed
    e_par = jnp.sum(e * params.W, axis=1) / w_norm  # ‖e‖ cos δ
    et_par = jnp.sum(e_tilde * w_tilde, axis=1) / wt_norm
    return UnlockingRates(
        small_init=math.sqrt(2.0) / n * safe_norm(signed[:, :-1]) * safe_cosine(params.W, target),
        q_form=jnp.sqrt(4 * P**2 + balance(params) ** 2) * e_par / P,
        augmented_exact=jnp.sqrt(4 * Pt**2 + Q**2) * et_par / Pt,
        augmented_small_init=math.sqrt(2.0)
        / n
        * safe_norm(signed)
        * safe_cosine(w_tilde, target_tilde),
        P=P,
        P_augmented=Pt,
    )


def window_indices(t, start: float, end: float) -> np.ndarray:
    """Indices of the record times in ``[start, end]``."""
    t = np.asarray(t)
    return np.nonzero((t >= start) & (t <= end))[0]


def log_growth_slope(t, P, start: float, end: float) -> np.ndarray:
    """Measured growth rate of P_i: secant slope of log P_i between the first and last record in
    ``[start, end]`` (the exact time average of d log P_i/dt over that span), ``[d]``."""
    idx = window_indices(t, start, end)
    if idx.size < 2:
        raise ValueError(
            f"the window [{start:g}, {end:g}] holds {idx.size} record times; need >= 2."
        )
    t = np.asarray(t, np.float64)
    logP = np.log(np.asarray(P, np.float64))
    a, b = idx[0], idx[-1]
    return (logP[b] - logP[a]) / (t[b] - t[a])


def window_mean(t, values, start: float, end: float) -> np.ndarray:
    """Trapezoidal time average of ``values [T, ...]`` over the records in ``[start, end]``."""
    idx = window_indices(t, start, end)
    if idx.size < 2:
        raise ValueError(
            f"the window [{start:g}, {end:g}] holds {idx.size} record times; need >= 2."
        )
    ts = np.asarray(t, np.float64)[idx]
    v = np.asarray(values, np.float64)[idx]
    dt = np.diff(ts).reshape((-1,) + (1,) * (v.ndim - 1))
    area = np.sum(0.5 * (v[1:] + v[:-1]) * dt, axis=0)
    return area / (ts[-1] - ts[0])


def pair_ratio_errors(slope, cos_delta, gamma_cell, groups) -> list[float]:
    """Pair-ratio law within each group (docs/theory.md §4):
    ``d/dt log(P_i/P_j) = γ_G (cos δ_i − cos δ_j)``.

    Args:
        slope: measured growth rates of log P_i ``[d]``.
        cos_delta: cos δ_i over the same span ``[d]``.
        gamma_cell: ``(√2/N)‖Σ_{E_i} ỹ x‖`` per neuron ``[d]`` (shared within a group).
        groups: member indices of each group.

    Returns:
        ``|measured − predicted| / γ_G`` for every pair of neurons of a group.
    """
    errors = []
    for members in groups:
        gamma = float(np.mean(gamma_cell[members]))
        for pos, i in enumerate(members):
            for j in members[pos + 1 :]:
                predicted = gamma * (cos_delta[i] - cos_delta[j])
                errors.append(float(abs((slope[i] - slope[j]) - predicted) / gamma))
    return errors


# --------------------------------------------------------------------------- phase 3


def neuron_groups(kappa, cell_hash, *, active=None, min_size: int = 2) -> list[np.ndarray]:
    """Groups of neurons with the same κ and the same cell at one record (docs/theory.md §5).

    Returns the member indices of each group of at least ``min_size`` neurons, largest first.
    With ``active`` (|E_i| per neuron), dead neurons (empty cell: no target, no dynamics) are
    left out.
    """
    kappa = np.asarray(kappa).astype(np.int64)
    h = np.asarray(cell_hash).astype(np.int64)
    keys = kappa * (1 << 33) + h
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    live = np.ones(kappa.shape, bool) if active is None else np.asarray(active) > 0
    groups = []
    for g in np.argsort(-counts, kind="stable"):
        members = np.nonzero((inverse == g) & live)[0]
        if members.size >= min_size:
            groups.append(members)
    return groups


def log_rate(t, P) -> np.ndarray:
    """d log P_i/dt from the records by centred differences (one-sided at the ends), ``[T, d]``."""
    return np.gradient(np.log(np.asarray(P, np.float64)), np.asarray(t, np.float64), axis=0)


def coefficient_of_variation(values, axis=-1) -> np.ndarray:
    """std/|mean| along ``axis``."""
    v = np.asarray(values, np.float64)
    return np.std(v, axis=axis) / np.abs(np.mean(v, axis=axis))


def _ranks(values) -> np.ndarray:
    """Ranks 0..n−1, tied values sharing their mean rank."""
    v = np.asarray(values, np.float64)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(v.size)
    ranks[order] = np.arange(v.size, dtype=np.float64)
    _, inverse = np.unique(v, return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=ranks)
    counts = np.bincount(inverse.ravel())
    return (sums / counts)[inverse.ravel()]


def _rank_correlation(a, b) -> float:
    """Spearman rank correlation (ties share their mean rank), NaN for constant input."""
    ra, rb = _ranks(a), _ranks(b)
    if np.std(ra) == 0 or np.std(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


# --------------------------------------------------------------------------- phase detection


@dataclasses.dataclass(frozen=True)
class GroupPhases:
    """Phase times of one group (NaN where the event is not seen in the record).

    Attributes:
        members: neuron indices.
        kappa: the group's alignment.
        alignment_done: first time the members' median cos δ (against the current cell's
            target) exceeds ``align_threshold`` (phase 1 over).
        unlocking_onset: first time Σ_G P_j reaches ``onset_fraction`` of its value at the loss
            drop (the group's norms have grown to within that factor of their loss-drop size).
        loss_drop: the network's loss-drop time (`gflow.loss_drop_time`).
    """

    members: tuple[int, ...]
    kappa: int
    alignment_done: float
    unlocking_onset: float
    loss_drop: float


def _first_time(t, mask) -> float:
    hit = np.nonzero(mask)[0]
    return float(np.asarray(t)[hit[0]]) if hit.size else float("nan")


def group_phases(
    t, obs, groups, *, align_threshold: float = 0.99, onset_fraction: float = 0.01
) -> list[GroupPhases]:
    """Alignment done, unlocking onset and loss drop for each group (docs/theory.md §3–§5).

    P grows at rate ∝ cos δ_i from the start, so "onset" is read on the scale that matters: the
    group's Σ P at the loss drop.
    """
    t = np.asarray(t, np.float64)
    drop = loss_drop_time(t, np.asarray(obs.loss))
    out = []
    cos = np.asarray(obs.cos_target, np.float64)
    P = np.asarray(obs.P, np.float64)
    kappa = np.asarray(obs.kappa)
    for members in groups:
        median_cos = np.median(cos[:, members], axis=1)
        total = P[:, members].sum(axis=1)
        at_drop = np.interp(drop, t, total) if math.isfinite(drop) else np.nan
        out.append(
            GroupPhases(
                members=tuple(int(i) for i in members),
                kappa=int(kappa[-1, members[0]]),
                alignment_done=_first_time(t, median_cos >= align_threshold),
                unlocking_onset=_first_time(t, total >= onset_fraction * at_drop),
                loss_drop=drop,
            )
        )
    return out


# --------------------------------------------------------------------------- time scale


def full_data_rate(data: TrainingData) -> float:
    """γ_full = (√2/N) ‖Σ_s ỹ_s x_s‖: the small-init unlocking rate of a neuron active on every
    sample and fully aligned (docs/theory.md §4)."""
    n = data.x.shape[0]
    return float(math.sqrt(2.0) / n * jnp.linalg.norm(data.signed_labels @ data.x))


def loss_drop_estimate(data: TrainingData, sigma: float) -> float:
    """Rough loss-drop time ``ln(1/σ²) / γ_full``: P_i starts near σ² and must grow to O(1) at a
    rate of order γ_full. On the embedded MNIST default and on Gaussian clusters the simulated
    drop comes 1.1–1.2 times later; use a margin when choosing a horizon."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0; got {sigma!r}.")
    rate = full_data_rate(data)
    if not rate > 0:
        raise ValueError(
            "the signed inputs sum to zero (Σ_s ỹ_s x_s = 0): no time scale to estimate."
        )
    return math.log(1.0 / sigma**2) / rate


# --------------------------------------------------------------------------- checks


IDENTITY = "identity"
CLAIM = "claim"
CHECK_KINDS = (IDENTITY, CLAIM)


class Check(NamedTuple):
    """One prediction compared with a simulation.

    ``passed`` is ``rel_error <= tolerance`` (False when either is NaN). ``detail`` says what
    ``predicted``, ``measured`` and ``rel_error`` are for this check. ``kind`` is ``"identity"``
    for an exact identity that checks the implementation (balance, Lemma 3.9, dP/dt) and
    ``"claim"`` for a statement of the paper.
    """

    name: str
    predicted: float
    measured: float
    rel_error: float
    tolerance: float
    passed: bool
    detail: str
    kind: str = CLAIM

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "predicted": _json_float(self.predicted),
            "measured": _json_float(self.measured),
            "rel_error": _json_float(self.rel_error),
            "tolerance": _json_float(self.tolerance),
            "passed": bool(self.passed),
            "detail": self.detail,
        }


def _json_float(value):
    value = float(value)
    return value if math.isfinite(value) else None


def make_check(
    name: str,
    predicted,
    measured,
    rel_error,
    tolerance: float,
    detail: str,
    kind: str = CLAIM,
) -> Check:
    """A `Check` whose verdict is ``rel_error <= tolerance``; ``kind`` is "identity" or "claim"."""
    if kind not in CHECK_KINDS:
        raise ValueError(f"kind must be one of {CHECK_KINDS}; got {kind!r}.")
    rel_error = float(rel_error)
    passed = bool(math.isfinite(rel_error) and rel_error <= tolerance)
    return Check(
        name, float(predicted), float(measured), rel_error, float(tolerance), passed, detail, kind
    )


@dataclasses.dataclass(frozen=True)
class CheckSettings:
    """Where and how strictly the claims are compared (fractions are of the loss-drop time).

    Attributes:
        check_fraction: phase-1 claims are read at the last snapshot at or before
            ``check_fraction · t_drop`` ("before the loss drops").
        rate_window: the unlocking rate is measured over ``[a, b] · t_drop`` (docs/theory.md
        §4 note).
        race_window: the racing claims over ``[a, b] · t_drop`` (docs/theory.md §5).
        angle_tolerance: |φ_i − predicted limit| allowed, radians.
        limit_angle_share, stable_share: share of neurons that must satisfy the claim.
        align_threshold: cos δ above which a neuron counts as aligned.
        onset_fraction: a group's unlocking onset is when Σ_G P first reaches this fraction of
            its value at the loss drop (its norms have become visible on the loss scale).
        rate_tolerance: median relative error allowed for the small-init unlocking rate.
        identity_tolerance: relative error allowed for exact identities checked at a state
            (Lemma 3.9, dP/dt); ``None``: 1e-9 for float64 data, 1e-3 for float32.
        window_identity_tolerance: relative error allowed for the exact rate identity averaged
            over the rate window (trapezoid rule on the snapshots).
        drift_tolerance: balance drift allowed (docs/theory.md §2).
        race_tolerance: relative error allowed for Conjecture 3.12's rate ``2 ε_G cos δ_i``
            (on top of 3 times the measured noise of the rate, see `phase3_checks`).
        inhibition_p_value: largest one-sided permutation p-value accepted for lateral
            inhibition (ρ < 0 across groups).
        share_tolerance: shortfall allowed for "every group" claims (silent alignment).
    """

    check_fraction: float = 0.8
    rate_window: tuple[float, float] = (0.5, 0.7)
    race_window: tuple[float, float] = (0.7, 1.0)
    angle_tolerance: float = 0.05
    limit_angle_share: float = 0.95
    stable_share: float = 0.90
    align_threshold: float = 0.99
    onset_fraction: float = 0.01
    rate_tolerance: float = 0.10
    identity_tolerance: float | None = None
    window_identity_tolerance: float = 1e-3
    drift_tolerance: float = 1e-8
    race_tolerance: float = 0.05
    inhibition_p_value: float = 0.05
    share_tolerance: float = 0.10

    def __post_init__(self):
        for name in ("check_fraction",):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1]; got {value!r}.")
        for name in ("rate_window", "race_window"):
            a, b = getattr(self, name)
            if not 0 <= a < b:
                raise ValueError(f"{name} must be (a, b) with 0 <= a < b; got {(a, b)!r}.")
        for name in (
            "angle_tolerance",
            "limit_angle_share",
            "stable_share",
            "align_threshold",
            "onset_fraction",
            "rate_tolerance",
            "identity_tolerance",
            "window_identity_tolerance",
            "drift_tolerance",
            "race_tolerance",
            "inhibition_p_value",
            "share_tolerance",
        ):
            value = getattr(self, name)
            if value is None and name == "identity_tolerance":
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number; got {value!r}.")


def _snapshot(traj, k: int) -> Params:
    return Params(*(jnp.asarray(np.asarray(a)[k]) for a in traj.snapshots))


def _snapshots(traj, idx) -> Params:
    return Params(*(jnp.asarray(np.asarray(a)[idx]) for a in traj.snapshots))


def _last_snapshot_before(traj, time: float) -> int:
    st = np.asarray(traj.snapshot_t, np.float64)
    before = np.nonzero(st <= time + 1e-12 * max(1.0, abs(time)))[0]
    return int(before[-1]) if before.size else 0


def _nearest_record(traj, time: float) -> int:
    return int(np.argmin(np.abs(np.asarray(traj.t, np.float64) - time)))


def _nan_check(name: str, tolerance: float, why: str, kind: str = CLAIM) -> Check:
    return make_check(name, float("nan"), float("nan"), float("nan"), tolerance, why, kind)


_speed_identities_all = jax.jit(jax.vmap(speed_identities, in_axes=(0, None)))
_unlocking_rates_all = jax.jit(jax.vmap(unlocking_rates, in_axes=(0, None)))


def identity_errors(traj, data: TrainingData) -> dict:
    """Largest relative errors of Lemma 3.9 and of the dP/dt identity over every snapshot.

    Speeds are compared on the scale ``‖v_i‖‖e_i‖`` (both sides of Lemma 3.9 are bounded by it);
    the ratio tan δ_i/‖w_i‖ where ``|cos δ_i| > 10⁻³``; dP/dt on the scale
    ``(‖w_i‖² + ‖v_i‖²)‖e_i‖ + ‖w_i‖|b_i β_i|``.
    """
    ident = _speed_identities_all(_snapshots(traj, slice(None)), data)
    norm_m, norm_p = (np.asarray(a, np.float64) for a in ident.norm_speed)
    ang_m, ang_p = (np.asarray(a, np.float64) for a in ident.angular_speed)
    ratio_m, ratio_p = (np.asarray(a, np.float64) for a in ident.ratio)
    dP_m, dP_p = (np.asarray(a, np.float64) for a in ident.dP)
    w_norm = np.linalg.norm(np.asarray(traj.snapshots.W, np.float64), axis=-1)
    speed_err = _max_scaled(
        np.maximum(np.abs(norm_m - norm_p), np.abs(ang_m - ang_p) * w_norm),
        np.asarray(ident.speed_scale, np.float64),
    )
    tilted = np.abs(norm_p) > 1e-3 * np.asarray(ident.speed_scale, np.float64)
    ratio_err = _max_scaled(np.where(tilted, np.abs(ratio_m - ratio_p), 0.0), np.abs(ratio_p))
    dP_err = _max_scaled(np.abs(dP_m - dP_p), np.asarray(ident.dP_scale, np.float64))
    dv_m, dv_p = (np.asarray(a, np.float64) for a in ident.v_norm_speed)
    vang_m, vang_p = (np.asarray(a, np.float64) for a in ident.v_angular_speed)
    v_norm = np.linalg.norm(np.asarray(traj.snapshots.V, np.float64), axis=-1)
    v_err = _max_scaled(
        np.maximum(np.abs(dv_m - dv_p), np.abs(vang_m - vang_p) * v_norm),
        np.asarray(ident.v_scale, np.float64),
    )
    live = np.asarray(ident.speed_scale[0]) > 0  # neurons with a non-empty cell at t = 0
    first_ratio = (
        (float(np.median(ratio_m[0][live])), float(np.median(ratio_p[0][live])))
        if live.any()
        else (float("nan"), float("nan"))
    )
    return {
        "speed": float(speed_err),
        "ratio": float(ratio_err),
        "dP": float(dP_err),
        "outgoing": float(v_err),
        "median_ratio_at_init": first_ratio,
        "snapshots": int(w_norm.shape[0]),
    }


def _max_scaled(error, scale) -> float:
    """max of error/scale over entries with a positive scale (0 if none)."""
    ok = scale > 0
    return float(np.max(np.where(ok, error / np.where(ok, scale, 1.0), 0.0), initial=0.0))


class Phase1State(NamedTuple):
    """Phase-1 predictions and measurements at one snapshot (`phase1_state`), ``[d]`` each.

    limit_error: |φ_i − predicted limit angle|. stable, two_cycle, stable_with_bias: see
    `stability_of_neurons`. drive: Σ_s a_i(s) ỹ_s. dead: no active sample. kappa_now: κ_i from
    v_i; kappa_init: κ_i predicted at t = 0. angle_first, angle_second: ∠(w_i, target) for the
    current cell's target and the second-order target. angle_from_init: ∠(w_i, T) for the
    stable target iterated from the initial pattern; search_fixed, search_two_cycle: how that
    iteration ended; same_cell_as_search: the neuron sits in that predicted cell.
    """

    limit_error: jax.Array
    stable: jax.Array
    two_cycle: jax.Array
    stable_with_bias: jax.Array
    drive: jax.Array
    dead: jax.Array
    kappa_now: jax.Array
    kappa_init: jax.Array
    angle_first: jax.Array
    angle_second: jax.Array
    angle_from_init: jax.Array
    search_fixed: jax.Array
    search_two_cycle: jax.Array
    same_cell_as_search: jax.Array


@jax.jit
def target_angles(params: Params, data: TrainingData) -> tuple[jax.Array, jax.Array]:
    """(∠(w_i, T_κ(g_i)), ∠(w_i, second-order target)) per neuron (docs/theory.md §3, Appendix "
    "C.3)."""
    return (
        angle_to(params.W, current_targets(params, data)),
        angle_to(params.W, second_order_targets(params, data)),
    )


@jax.jit
def phase1_state(params: Params, params0: Params, data: TrainingData) -> Phase1State:
    """Everything phase 1 predicts, evaluated at ``params`` (initial state ``params0``)."""
    phi = jnp.arctan2(params.V[:, 1], params.V[:, 0])
    stable, cycle, stable_bias = stability_of_neurons(params, data)
    kappa_init = predicted_kappa(params0, data)
    search = iterate_target_map(gating_pattern(params0, data.x).T, kappa_init, data)
    gates = gating_pattern(params, data.x)
    first, second = target_angles(params, data)
    return Phase1State(
        limit_error=wrapped_angle(phi, limit_angle(params, data)),
        stable=stable,
        two_cycle=cycle,
        stable_with_bias=stable_bias,
        drive=outgoing_drive(params, data),
        dead=jnp.sum(gates, axis=0) == 0,
        kappa_now=outgoing_alignment(params.V),
        kappa_init=kappa_init,
        angle_first=first,
        angle_second=second,
        angle_from_init=angle_to(params.W, search.targets),
        search_fixed=search.fixed,
        search_two_cycle=search.two_cycle,
        same_cell_as_search=jnp.all(search.patterns == gates.T, axis=-1),
    )


class FaceState(NamedTuple):
    """The stable-face test of `gflow._faces` for each neuron's face at one state, ``[d]`` each:
    stable, attracting, interior, in_cone (conditions (a)–(c)) and angle, ∠(θ_i, P_κ(g_i, S_i))."""

    stable: np.ndarray
    attracting: np.ndarray
    interior: np.ndarray
    in_cone: np.ndarray
    angle: np.ndarray


def _sliding_sets(traj, k: int, params: Params, data: TrainingData) -> np.ndarray:
    """``bool [d, N]``: the pairs that slide at snapshot k, from the sliding solver's record;
    without one (another solver), the pairs with ``z_is = 0`` exactly."""
    sliding = getattr(traj, "sliding", None)
    if sliding is not None and getattr(sliding, "snapshots", None) is not None:
        return np.asarray(sliding.snapshots)[k].T.astype(bool)
    return np.asarray(preactivations(params, data.x) == 0).T


def face_state(params: Params, sliding_sets, data: TrainingData) -> FaceState:
    """Each neuron's face ``(g_i, S_i)`` in the cones of θ = (w, b) on inputs x̃ = (x, 1),
    tested by `gflow._faces.stable_face_test` for its current κ_i (docs/theory.md §3, §8)."""
    from ._faces import face_inputs, stable_face_test

    x = face_inputs(data, bias=True)
    active = gating_pattern(params, data.x).T
    kappa = outgoing_alignment(params.V)
    test = stable_face_test(active, jnp.asarray(sliding_sets), kappa, x, data.signed_labels)
    theta = jnp.concatenate([params.W, params.b[:, None]], axis=1)
    return FaceState(
        stable=np.asarray(test.stable),
        attracting=np.asarray(test.attracting),
        interior=np.asarray(test.interior),
        in_cone=np.asarray(test.in_cone),
        angle=np.asarray(angle_to(theta, test.projection.target)),
    )


def phase1_checks(
    traj, data: TrainingData, t_drop: float, settings: CheckSettings
) -> tuple[list[Check], dict]:
    """Limit angles and stable cells before the loss drops; targets and their refinements."""
    k = _last_snapshot_before(traj, settings.check_fraction * t_drop)
    t_check = float(np.asarray(traj.snapshot_t)[k])
    params = _snapshot(traj, k)
    state = jax.tree.map(np.asarray, phase1_state(params, _snapshot(traj, 0), data))
    off, dead = state.limit_error, state.dead
    share = float(np.mean(off <= settings.angle_tolerance))
    stable, stable_bias = float(state.stable.mean()), float(state.stable_with_bias.mean())
    bias_ratio = float(
        np.max(np.abs(np.asarray(params.b)) / np.linalg.norm(np.asarray(params.W), axis=1))
    )
    sliding_sets = _sliding_sets(traj, k, params, data)
    on_face = sliding_sets.any(axis=1)  # [d]
    face_note = (
        f"; {int(on_face.sum())} of {on_face.size} neurons slide on a cell boundary here "
        f"(z_is = 0 for some s: they move on a face, never inside an open cell)"
    )
    faces = face_state(params, sliding_sets, data)
    stable_face = float(np.mean(faces.stable[~dead])) if np.any(~dead) else float("nan")
    checks = [
        make_check(
            "phase1.limit_angle",
            settings.limit_angle_share,
            share,
            1.0 - share,
            1.0 - settings.limit_angle_share,
            f"share of neurons with |φ_i − limit| <= {settings.angle_tolerance} rad at t = "
            f"{t_check:.4g} "
            f"({t_check / t_drop:.2f}·t_drop); limit −π/4 or 3π/4 by the sign of Σ_s a_i(s) ỹ_s at "
            "that time; "
            f"median |φ_i − limit| = {np.median(off):.3g} rad; {int(dead.sum())} dead neuron(s)",
        ),
        make_check(
            "phase1.stable_cell",
            settings.stable_share,
            stable,
            1.0 - stable,
            1.0 - settings.stable_share,
            f"share of neurons at t = {t_check:.4g} whose cell passes gate(T_κ(g)) == g (b = 0 "
            "cells, κ from "
            f"v_i); another {state.two_cycle.mean():.3f} sit on a 2-cycle of the target map"
            f"{face_note}",
        ),
        make_check(
            "phase1.stable_face",
            settings.stable_share,
            stable_face,
            1.0 - stable_face,
            1.0 - settings.stable_share,
            f"Theorem 3.6 on the nonsmooth flow: share of the {int(np.sum(~dead))} live neurons at "
            f"t = {t_check:.4g} whose face (g_i, S_i) (active samples, samples sliding on their "
            f"boundary, in the cones of θ = (w, b) on inputs (x, 1)) is stable for κ_i: every "
            f"sliding sample attracts ({np.mean(faces.attracting[~dead]):.2f} of them), slides "
            f"(λ* in (0, 1): {np.mean(faces.interior[~dead]):.2f}) and the projected target lies "
            f"in the face's closed cone ({np.mean(faces.in_cone[~dead]):.2f}); open cells with "
            f"the bias (S = ∅): {stable_bias:.2f} stable; median ∠(θ_i, projected target) "
            f"{np.median(faces.angle[~dead]):.3g} rad (max |b_i|/‖w_i‖ = {bias_ratio:.3g})",
        ),
    ]
    live = ~dead
    converged = state.angle_first <= settings.angle_tolerance
    share_conv = float(np.mean(converged[live])) if live.any() else float("nan")
    k_half = _last_snapshot_before(traj, 0.5 * t_check)
    angle_half = np.asarray(target_angles(_snapshot(traj, k_half), data)[0])
    closer = float(np.mean((state.angle_first < angle_half)[live])) if live.any() else float("nan")
    checks.append(
        make_check(
            "phase1.directional_convergence",
            settings.limit_angle_share,
            share_conv,
            1.0 - share_conv,
            1.0 - settings.limit_angle_share,
            f"Theorem 3.6: share of the {int(live.sum())} live neurons with ∠(w_i, T_κ(g_i)) <= "
            f"{settings.angle_tolerance} rad at t = {t_check:.4g} (the target of the current cell, "
            f"b = 0 form); median angle {np.median(state.angle_first[live]):.3g} rad; "
            f"{closer:.2f} of them closer to their target than at t = "
            f"{float(np.asarray(traj.snapshot_t)[k_half]):.4g}; a neuron that slides on a cell "
            f"boundary moves towards the target projected on that face, not the target itself",
        )
    )
    late = _last_snapshot_before(traj, t_drop)
    late_params = _snapshot(traj, late)
    first_late, second_late = target_angles(late_params, data)
    steady_check = angle_to(
        params.W, jnp.asarray(np.nan_to_num(steady_second_order_targets(params, data)))
    )
    steady_targets_late = steady_second_order_targets(late_params, data)
    steady_late = np.asarray(
        angle_to(late_params.W, jnp.asarray(np.nan_to_num(steady_targets_late)))
    )
    found = np.all(np.isfinite(steady_targets_late), axis=1)  # live, with a steady direction
    first_late = np.asarray(first_late)
    t_late = float(np.asarray(traj.snapshot_t)[late])
    if found.any():
        zeroth, steady = float(np.median(first_late[found])), float(np.median(steady_late[found]))
        ratio = steady / zeroth if zeroth > 0 else float("nan")
    else:
        zeroth = steady = ratio = float("nan")
    checks.append(
        make_check(
            "phase1.second_order_target",
            zeroth,
            steady,
            ratio,
            1.0,
            f"Appendix C.3 at t = {t_late:.4g} (last snapshot before t_drop, where the outputs "
            f"are largest): median ∠(w_i, T⁽²⁾_i) for the steady direction (μ I + (Λ/2) C_E) ŵ = "
            f"κ S(g), Λ = √2 Σ_G P_j, against the median ∠(w_i, T_κ(g_i)) (predicted column) "
            f"over {int(found.sum())} neurons; rel. error is their ratio, < 1 when the "
            f"refinement agrees better; the first-order target built from the current output "
            f"instead: {np.median(np.asarray(second_late)):.3g} rad",
        )
    )
    drive = np.abs(state.drive)
    report = {
        "t_check": t_check,
        "limit_angle_error_rad": {"median": float(np.median(off)), "max": float(np.max(off))},
        "kappa_predicted_at_init_matches": float(np.mean(state.kappa_now == state.kappa_init)),
        "limit_angle_share_of_live_neurons": float(np.mean(off[~dead] <= settings.angle_tolerance))
        if np.any(~dead)
        else float("nan"),
        "dead_neurons": int(dead.sum()),
        "weak_drive_neurons": int(np.sum(drive < 1e-6 * np.max(drive))),
        "stable_share": stable,
        "stable_share_with_bias": stable_bias,
        "stable_face_share": stable_face,
        "sliding_neurons": int(on_face.sum()),
        "angle_to_face_target_rad": _quantiles(faces.angle[~dead]) if np.any(~dead) else None,
        "two_cycle_share": float(state.two_cycle.mean()),
        "angle_to_current_target_rad": _quantiles(state.angle_first),
        "angle_to_second_order_target_rad": _quantiles(state.angle_second),
        "angle_to_steady_second_order_target_rad": _quantiles(np.asarray(steady_check)[live]),
        "angle_to_stable_target_from_init_rad": _quantiles(state.angle_from_init),
        "stable_search_from_init": {
            "fixed": float(np.mean(state.search_fixed)),
            "two_cycle": float(np.mean(state.search_two_cycle)),
            "same_pattern_as_simulation": float(np.mean(state.same_cell_as_search)),
        },
        "second_order_at_t_drop": {
            "t": float(np.asarray(traj.snapshot_t)[late]),
            "angle_to_current_target_rad": _quantiles(first_late),
            "angle_to_second_order_target_rad": _quantiles(second_late),
            "angle_to_steady_second_order_target_rad": _quantiles(np.asarray(steady_late)),
        },
        "directional_convergence": {
            "share_within_tolerance": share_conv,
            "share_closer_than_at_half_time": closer,
        },
    }
    return checks, report


def _quantiles(values) -> dict:
    v = np.asarray(values, np.float64)
    return {
        "median": float(np.median(v)),
        "q10": float(np.quantile(v, 0.1)),
        "q90": float(np.quantile(v, 0.9)),
    }


def phase2_checks(
    traj, data: TrainingData, t_drop: float, settings: CheckSettings
) -> tuple[list[Check], dict]:
    """Unlocking rates over the rate window against the measured growth of log P
    (docs/theory.md §4).

    ``phase2.unlocking_rate`` (claim, Theorem 3.11): the small-init rate γ_i over the neurons
    aligned at the window's start. ``phase2.rate_identity`` (identity): the exact rate of
    ``P̃_i = ‖θ_i‖‖v_i‖`` (it holds on sliding motions too, since ``θ_i ⊥ x̃_s`` for a sliding
    pair) against the secant slope of log P̃_i, for every live neuron, on the scale 2‖e_i‖.
    """
    a, b = (f * t_drop for f in settings.rate_window)
    st = np.asarray(traj.snapshot_t, np.float64)
    idx = window_indices(st, a, b)
    if idx.size < 2:
        why = (
            f"only {idx.size} snapshot(s) in the rate window [{a:.4g}, {b:.4g}]: record more "
            "snapshots or a longer horizon"
        )
        return [
            _nan_check("phase2.unlocking_rate", settings.rate_tolerance, why),
            _nan_check("phase2.rate_identity", settings.window_identity_tolerance, why, IDENTITY),
        ], {}
    snaps = _snapshots(traj, idx)
    rates = _unlocking_rates_all(snaps, data)
    ts = st[idx]
    slope = log_growth_slope(ts, rates.P, ts[0], ts[-1])
    slope_aug = log_growth_slope(ts, rates.P_augmented, ts[0], ts[-1])
    mean = {
        name: window_mean(ts, getattr(rates, name), ts[0], ts[-1])
        for name in ("small_init", "q_form", "augmented_exact", "augmented_small_init")
    }
    e = np.asarray(_error_vectors_all(snaps, data), np.float64)
    rate_scale = window_mean(ts, 2.0 * np.linalg.norm(e, axis=-1), ts[0], ts[-1])
    live = rate_scale > 0
    identity_err = np.abs(mean["augmented_exact"] - slope_aug)[live] / rate_scale[live]
    # the trapezoid rule's own error, estimated from every other snapshot (Richardson)
    coarse = window_mean(ts[::2], np.asarray(rates.augmented_exact)[::2], ts[0], ts[::2][-1])
    coarse_slope = log_growth_slope(ts[::2], rates.P_augmented[::2], ts[0], ts[::2][-1])
    coarse_err = np.abs(coarse - coarse_slope)[live] / rate_scale[live]
    k0 = _nearest_record(traj, ts[0])
    aligned = np.asarray(traj.observables.cos_target[k0]) >= settings.align_threshold
    aligned &= mean["small_init"] > 0
    window = (
        f"[{ts[0]:.4g}, {ts[-1]:.4g}] ({settings.rate_window[0]:g}–"
        f"{settings.rate_window[1]:g}·t_drop, {idx.size} snapshots)"
    )
    report = {
        "window": [float(ts[0]), float(ts[-1])],
        "aligned_neurons": int(aligned.sum()),
        "neurons": int(aligned.size),
        "rate_identity_max_error": float(np.max(identity_err, initial=0.0)),
        "rate_identity_max_error_every_other_snapshot": float(np.max(coarse_err, initial=0.0)),
    }
    identity = make_check(
        "phase2.rate_identity",
        float(np.median(mean["augmented_exact"][live])) if live.any() else float("nan"),
        float(np.median(slope_aug[live])) if live.any() else float("nan"),
        float(np.max(identity_err)) if live.any() else float("nan"),
        settings.window_identity_tolerance,
        f"d log P̃_i/dt = √(4P̃²+Q²)‖ẽ‖cos δ̃/P̃ for θ_i = (w_i, b_i) (exact), trapezoid average "
        f"over {window} vs the secant slope of log P̃_i; max over {int(live.sum())} live neurons "
        "of |difference|/2‖e_i‖ (every other snapshot: "
        f"{report['rate_identity_max_error_every_other_snapshot']:.2g})",
        IDENTITY,
    )

    def rel(pred, meas):
        return np.abs(pred - meas) / np.abs(meas)

    growing = (mean["small_init"] > 0) & (slope > 0)
    report["growing_neurons"] = int(growing.sum())
    report["median_rel_error_small_init_all_growing"] = (
        float(np.median(rel(mean["small_init"][growing], slope[growing])))
        if growing.any()
        else float("nan")
    )
    if not aligned.any():
        cos0 = np.asarray(traj.observables.cos_target[k0])
        why = (
            f"no neuron has cos δ >= {settings.align_threshold} (to its cell's target) at the "
            "start "
            f"of the rate window {window}: median cos δ {np.median(cos0):.3g}, max "
            f"{np.max(cos0):.3g}; the rate law of Theorem 3.11 assumes aligned neurons"
        )
        return [_nan_check("phase2.unlocking_rate", settings.rate_tolerance, why), identity], report
    errors = {
        name: rel(
            mean[name][aligned], (slope_aug if name.startswith("augmented") else slope)[aligned]
        )
        for name in mean
    }
    for name, err in errors.items():
        report[f"median_rel_error_{name}"] = float(np.median(err))
    checks = [
        make_check(
            "phase2.unlocking_rate",
            float(np.median(mean["small_init"][aligned])),
            float(np.median(slope[aligned])),
            float(np.median(errors["small_init"])),
            settings.rate_tolerance,
            f"γ_i = (√2/N)‖Σ_(E_i) ỹ x‖ cos δ_i averaged over {window} vs the secant slope of "
            f"log P_i there; median over {int(aligned.sum())} of {aligned.size} neurons aligned "
            f"(cos δ >= {settings.align_threshold}); exact b = 0 form √(4P²+Q²)‖e‖cos δ/P: median "
            f"error {np.median(errors['q_form']):.3g}; with the bias as a weight (x, 1): "
            f"{np.median(errors['augmented_small_init']):.3g}",
        ),
        identity,
    ]
    obs = traj.observables
    k1 = _nearest_record(traj, ts[-1])
    cos_mean = np.mean(np.asarray(obs.cos_target[k0 : k1 + 1], np.float64), axis=0)
    gamma_cell = math.sqrt(2.0) * np.asarray(obs.target_strength[k0], np.float64)
    groups = neuron_groups(obs.kappa[k0], obs.cell_hash[k0], active=obs.active[k0])
    pair_err = pair_ratio_errors(slope, cos_mean, gamma_cell, groups)
    report["pair_ratio"] = {
        "pairs": len(pair_err),
        "median_abs_error_over_group_rate": float(np.median(pair_err)) if pair_err else None,
    }
    return checks, report


_error_vectors_all = jax.jit(jax.vmap(error_vectors, in_axes=(0, None)))


def bias_error(params: Params, data: TrainingData) -> jax.Array:
    """β_i = −(1/N) Σ_s g_i(s)(v̂_i·r_s), the bias part of ẽ_i (ḃ_i = ‖v_i‖ β_i), ``[d]``
    (docs/theory.md §2)."""
    g = gating_pattern(params, data.x).astype(data.x.dtype)
    v_hat = params.V / safe_norm(params.V)[:, None]
    r = residuals(params, data.x, data.y)
    return -jnp.sum(g * (r @ v_hat.T), axis=0) / data.x.shape[0]


_betas_all = jax.jit(jax.vmap(bias_error, in_axes=(0, None)))


def race_predictions(W, e, groups) -> np.ndarray:
    """Conjecture 3.12's rate ``2 ε_G cos δ_i = 2 ŵ_i·ē_{G∖i}`` at each snapshot, ``[K, d]``.

    ``W``, ``e``: incoming weights and error vectors ``[K, d, D]``; ``ē_{G∖i}`` is the mean error
    vector of the *other* members of neuron i's group (docs/theory.md §5), so a neuron's rate is
    predicted from the rest of its group, never from itself. Neurons outside ``groups`` (or
    alone in theirs) get NaN.
    """
    W, e = np.asarray(W, np.float64), np.asarray(e, np.float64)
    out = np.full(W.shape[:2], np.nan)
    w_hat = W / np.linalg.norm(W, axis=-1, keepdims=True)
    for members in groups:
        if len(members) < 2:
            continue
        em = e[:, members]
        others = (em.sum(axis=1, keepdims=True) - em) / (len(members) - 1)
        out[:, members] = 2.0 * np.sum(w_hat[:, members] * others, axis=-1)
    return out


def spearman_permutation_test(a, b, *, draws: int = 20_000, seed: int = 0) -> tuple[float, float]:
    """Spearman ρ(a, b) and the one-sided p-value ``Pr(ρ_perm <= ρ)`` under random pairings.

    Exact over all pairings for up to 7 values, else ``draws`` random ones (fixed seed). NaN
    for fewer than 3 values or constant input.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = a.size
    rho = _rank_correlation(a, b)
    if n < 3 or not math.isfinite(rho):
        return rho, float("nan")
    ra, rb = _ranks(a), _ranks(b)
    if n <= 7:
        perms = np.array(list(itertools.permutations(range(n))))
    else:
        rng = np.random.default_rng(seed)
        perms = np.argsort(rng.random((draws, n)), axis=1)
    ra_c, rb_c = ra - ra.mean(), rb - rb.mean()
    null = (rb_c[perms] @ ra_c) / (np.linalg.norm(ra_c) * np.linalg.norm(rb_c))
    return rho, float(np.mean(null <= rho + 1e-12))


def _inhibition_score(rho: float, p_value: float) -> float:
    """The permutation p-value when ρ < 0, 1 when ρ >= 0, NaN when ρ is undefined."""
    if not math.isfinite(rho):
        return float("nan")
    return p_value if rho < 0 else 1.0


def phase3_checks(
    traj, data: TrainingData, t_drop: float, settings: CheckSettings
) -> tuple[list[Check], dict]:
    """Racing (docs/theory.md §5, Conjecture 3.12) over the race window, from the snapshots.

    Groups are fixed at the window's start (same κ, same gating pattern, live). Race: each
    member's secant slope of log P_i over the window against the window mean of
    ``2 ŵ_i·ē_{G∖i}`` (`race_predictions`), relative to ``2‖ē_{G∖i}‖``; the tolerance is the
    claim's ``race_tolerance`` plus 3 times the measurement noise, read off the same comparison
    for the exact identity ``d log P̃_i/dt = √(4P̃²+Q²)‖ẽ‖cos δ̃/P̃`` (docs/theory.md §4).
    Lateral inhibition: across groups, the fall of log ε_G over the window against the growth
    of Σ_G P (one-sided Spearman permutation test; neither quantity is monotone across groups).
    """
    st = np.asarray(traj.snapshot_t, np.float64)
    a, b = (f * t_drop for f in settings.race_window)
    idx = window_indices(st, a, b)
    names = ("phase3.race_rate", "phase3.lateral_inhibition")
    if idx.size < 3:
        why = f"only {idx.size} snapshot(s) in the race window [{a:.4g}, {b:.4g}]"
        return [_nan_check(n, settings.race_tolerance, why) for n in names], {}
    ts = st[idx]
    snaps = _snapshots(traj, idx)
    W = np.asarray(snaps.W, np.float64)
    V = np.asarray(snaps.V, np.float64)
    e = np.asarray(_error_vectors_all(snaps, data), np.float64)
    pattern0 = np.asarray(gating_pattern(_snapshot(traj, int(idx[0])), data.x)).T  # [d, N]
    kappa0 = np.where(V[0, :, 0] > V[0, :, 1], 1, -1)
    live = pattern0.any(axis=1)
    keys: dict = {}
    for i in np.nonzero(live)[0]:
        keys.setdefault((int(kappa0[i]), pattern0[i].tobytes()), []).append(int(i))
    all_groups = sorted(keys.values(), key=len, reverse=True)
    groups = [np.array(m) for m in all_groups if len(m) >= 2]
    P = np.linalg.norm(W, axis=-1) * np.linalg.norm(V, axis=-1)
    window = (
        f"[{ts[0]:.4g}, {ts[-1]:.4g}] ({settings.race_window[0]:g}–"
        f"{settings.race_window[1]:g}·t_drop, {idx.size} snapshots)"
    )
    report: dict = {"window": [float(ts[0]), float(ts[-1])], "groups": len(groups)}
    checks = []
    if groups:
        members = np.concatenate(groups)
        pred = race_predictions(W, e, groups)
        others = np.zeros_like(pred)
        for m in groups:
            em = e[:, m]
            loo = (em.sum(axis=1, keepdims=True) - em) / (len(m) - 1)
            others[:, m] = 2.0 * np.linalg.norm(loo, axis=-1)
        scale = window_mean(ts, others, ts[0], ts[-1])[members]
        slope = log_growth_slope(ts, P, ts[0], ts[-1])[members]
        predicted = window_mean(ts, pred, ts[0], ts[-1])[members]
        err = np.abs(slope - predicted) / scale
        rates = _unlocking_rates_all(snaps, data)
        exact = window_mean(ts, np.asarray(rates.augmented_exact), ts[0], ts[-1])[members]
        slope_aug = log_growth_slope(ts, np.asarray(rates.P_augmented), ts[0], ts[-1])[members]
        own_scale = window_mean(ts, 2.0 * np.linalg.norm(e, axis=-1), ts[0], ts[-1])[members]
        noise = float(np.median(np.abs(slope_aug - exact) / own_scale))
        tolerance = settings.race_tolerance + 3.0 * noise
        # the same law with the bias counted as a weight: 2 θ̂_i·ē̃_{G∖i} against log P̃_i
        beta = np.asarray(_betas_all(snaps, data), np.float64)
        e_aug = np.concatenate([e, beta[..., None]], axis=-1)
        theta = np.concatenate([W, np.asarray(snaps.b, np.float64)[..., None]], axis=-1)
        pred_aug = window_mean(ts, race_predictions(theta, e_aug, groups), ts[0], ts[-1])
        err_aug = np.abs(slope_aug - pred_aug[members]) / scale
        report["median_error_with_bias_as_weight"] = float(np.median(err_aug))
        per_group = [float(np.median(err[np.isin(members, m)])) for m in groups]
        report.update(
            group_sizes=[len(m) for m in groups],
            median_error_per_group=per_group,
            noise=noise,
            tolerance=tolerance,
            max_error=float(np.max(err)),
        )
        checks.append(
            make_check(
                names[0],
                float(np.median(predicted)),
                float(np.median(slope)),
                float(np.median(err)),
                tolerance,
                f"d log P_i/dt (secant over {window}) vs 2ε_G cos δ_i = 2ŵ_i·ē, ē the mean error "
                "vector of the other members of i's group (same κ and cell at the window's "
                "start); "
                f"median |error|/2‖ē‖ over {members.size} neurons in {len(groups)} groups "
                f"(per group: {', '.join(f'{v:.2g}' for v in per_group)}); tolerance "
                f"{settings.race_tolerance:g} + 3 × noise {noise:.2g} (the same comparison for the "
                f"exact rate of P̃)",
            )
        )
    else:
        checks.append(
            _nan_check(
                names[0], settings.race_tolerance, f"no group of >= 2 live neurons at {ts[0]:.4g}"
            )
        )
    # lateral inhibition: ε_G against the growth of the output that lands on E_G, from every
    # neuron j in proportion to the share of E_G it is active on
    eps = np.array([np.linalg.norm(e[:, m].mean(axis=1), axis=-1) for m in all_groups])  # [G, K]
    fall = np.log(eps[:, -1] / eps[:, 0]) if len(all_groups) else np.zeros(0)
    effective = np.array([pattern0[m[0]] for m in all_groups], np.float64)  # [G, N]
    overlap = (pattern0.astype(np.float64) @ effective.T) / effective.sum(axis=1)  # [d, G]
    growth = (P[-1] - P[0]) @ overlap if len(all_groups) else np.zeros(0)
    rho, p_value = spearman_permutation_test(fall, growth)
    report["lateral_inhibition"] = {
        "groups": len(all_groups),
        "spearman": rho,
        "p_value": p_value,
        "log_epsilon_change": fall.tolist(),
        "sum_P_growth": growth.tolist(),
    }
    checks.append(
        make_check(
            names[1],
            0.0,
            rho,
            _inhibition_score(rho, p_value),
            settings.inhibition_p_value,
            f"across {len(all_groups)} groups (incl. single neurons) over {window}: Spearman ρ "
            f"of Δ log ε_G against the growth Σ_j ΔP_j |E_j ∩ E_G|/|E_G| of the output on E_G "
            f"(expect ρ < 0: the neurons that grow lower ε_G of every group whose samples they "
            f"share); rel. error is the one-sided permutation p-value of ρ (1 when ρ >= 0)",
        )
    )
    return checks, report


def phase_order_checks(traj, t_drop: float, settings: CheckSettings) -> tuple[list[Check], dict]:
    """Per group: alignment done, unlocking onset, loss drop; silent alignment = the first
    precedes the second (docs/theory.md §2–§4)."""
    obs = traj.observables
    k = _nearest_record(traj, settings.check_fraction * t_drop)
    alive = np.asarray(obs.active[k]) > 0
    groups = neuron_groups(obs.kappa[k], obs.cell_hash[k], active=obs.active[k], min_size=1)
    phases = group_phases(
        traj.t,
        obs,
        groups,
        align_threshold=settings.align_threshold,
        onset_fraction=settings.onset_fraction,
    )
    sizes = np.array([len(g.members) for g in phases], np.float64)
    in_order = np.array(
        [g.alignment_done <= g.unlocking_onset for g in phases]
    )  # NaN compares False
    share = float(np.sum(sizes * in_order) / np.sum(sizes))
    table = [dataclasses.asdict(g) for g in phases]
    check = make_check(
        "phases.silent_alignment",
        1.0,
        share,
        1.0 - share,
        settings.share_tolerance,
        f"share of neurons whose group (same κ and cell at t = {float(np.asarray(traj.t)[k]):.4g}) "
        "reaches "
        f"median cos δ >= {settings.align_threshold} before Σ_G P reaches "
        f"{settings.onset_fraction:g} of its "
        f"loss-drop value (unlocking onset); {len(phases)} groups; loss drop at {t_drop:.4g}; "
        f"{int((~alive).sum())} dead neuron(s) (no active sample, no target) left out",
    )
    return [check], {"groups": table}


def validate_trajectory(
    traj, data: TrainingData, *, settings: CheckSettings = CheckSettings()
) -> tuple[list[Check], dict]:
    """Every check of docs/theory.md §2–§5 on one gradient-flow `Trajectory` (with snapshots).

    The trajectory should run past the loss drop and carry snapshots dense enough for the rate
    window (`gflow validate` records ~200). Returns ``(checks, report)``; the report holds the
    numbers behind each check and the measurements that are not pass/fail claims (second-order
    target, stable cell predicted from the initial pattern, group phases).
    """
    obs = traj.observables
    t_drop = loss_drop_time(traj.t, obs.loss)
    identity_tol = settings.identity_tolerance
    if identity_tol is None:
        identity_tol = 1e-9 if np.asarray(data.x).dtype == np.float64 else 1e-3
    drift = float(np.max(np.asarray(balance_drift(obs))))
    ident = identity_errors(traj, data)
    checks = [
        make_check(
            "balance_drift",
            0.0,
            drift,
            drift,
            settings.drift_tolerance,
            "max_i max_t |Q_i(t) − Q_i(0)| / max_t (‖w_i‖² + b_i² + ‖v_i‖²) (docs/theory.md §2; "
            "integration error)",
            IDENTITY,
        ),
        make_check(
            "lemma_3_9",
            ident["median_ratio_at_init"][1],
            ident["median_ratio_at_init"][0],
            max(ident["speed"], ident["ratio"]),
            identity_tol,
            "|dŵ/dt| and d‖w‖/dt from the vector field vs (‖v‖/‖w‖)‖e‖ sin δ and ‖v‖‖e‖ cos δ, "
            "and "
            f"their ratio vs tan δ/‖w‖, at {ident['snapshots']} snapshots; predicted/measured: "
            "median "
            f"ratio at t = 0",
            IDENTITY,
        ),
        make_check(
            "lemma_3_9_v",
            0.0,
            ident["outgoing"],
            ident["outgoing"],
            identity_tol,
            f"outgoing half: d‖v‖/dt and |dv̂/dt| from the vector field vs θ·ẽ (eq. 2.1) and "
            f"(|A|/‖v‖)|sin(φ + π/4)| with A = −(√2/N) Σ_s a(s) ρ_s (v̇ ∥ (1, −1)), at "
            f"{ident['snapshots']} snapshots; max error on the scale |A| + ‖θ‖‖ẽ‖ "
            f"(docs/theory.md §2)",
            IDENTITY,
        ),
        make_check(
            "dP_identity",
            0.0,
            ident["dP"],
            ident["dP"],
            identity_tol,
            "dP_i/dt from the vector field vs (‖w‖²+‖v‖²)(e·ŵ) + ‖w‖ b β (docs/theory.md §4), max "
            "relative error",
            IDENTITY,
        ),
    ]
    report: dict = {"t_drop": t_drop, "identities": ident, "balance_drift": drift}
    if not math.isfinite(t_drop):
        checks.append(
            _nan_check(
                "loss_drop", 0.0, "the loss never fell by half of its decrease: extend the horizon"
            )
        )
        return checks, report
    for name, (found, part) in {
        "phase1": phase1_checks(traj, data, t_drop, settings),
        "phase2": phase2_checks(traj, data, t_drop, settings),
        "phase3": phase3_checks(traj, data, t_drop, settings),
        "phases": phase_order_checks(traj, t_drop, settings),
    }.items():
        checks.extend(found)
        report[name] = part
    return checks, report

"""How well a discretisation follows the gradient flow: trajectory errors against a reference,
Richardson references built from GD at η, η/2, η/4, the window where GD converges at first
order, perturbed starts, and the gate margins and chatter of explicit steps near the boundaries
where the field jumps (docs/theory.md §1, §8.1).

A trajectory here is a pytree of arrays (e.g. `Params` ``(W, b, V)`` or a list of them) whose
leading axis is the save time; every function works on NumPy copies in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from ._network import Params, gating_pattern
from ._observables import TrainingData
from ._sgd import SGDConfig, train_gd


def _flat(tree: Any) -> np.ndarray:
    """All leaves of a trajectory as one ``[T, n]`` float64 matrix (rows = save times)."""
    leaves = [np.asarray(a, np.float64) for a in jax.tree.leaves(tree)]
    return np.concatenate([a.reshape(a.shape[0], -1) for a in leaves], axis=1)


def relative_gaps(a: Any, b: Any) -> np.ndarray:
    """Relative distance per save time, all weights of the network (docs/theory.md §1):

        gap(t) = ‖θ_a(t) − θ_b(t)‖ / ‖θ_b(t)‖      (gap = ‖θ_a(t)‖ where θ_b(t) = 0)

    >>> float(relative_gaps([np.array([[6.0, 8.0]])], [np.array([[3.0, 4.0]])])[0])
    1.0
    """
    theta_a, theta_b = _flat(a), _flat(b)
    if theta_a.shape != theta_b.shape:
        raise ValueError(f"trajectories differ in shape: {theta_a.shape} against {theta_b.shape}")
    norm = np.linalg.norm(theta_b, axis=1)
    return np.linalg.norm(theta_a - theta_b, axis=1) / np.where(norm > 0, norm, 1.0)


def trajectory_errors(P: ArrayLike, params: Any, P_ref: ArrayLike, params_ref: Any) -> dict:
    """Errors of a trajectory against a reference on the same save grid (rows = save times).

        params = max_t ‖θ(t) − θ_ref(t)‖ / ‖θ_ref(t)‖                      (`relative_gaps`)
        P      = max_t max_i |P_i(t) − P_i^ref(t)| / max_i P_i^ref(t)

    with ``P_i = ‖w_i‖‖v_i‖`` ``[T, d]`` (docs/theory.md §4). ``params`` also sees the directions
    of the neurons; ``P`` is relative to the largest neuron at each time.
    """
    P, P_ref = np.asarray(P, np.float64), np.asarray(P_ref, np.float64)
    if P.shape != P_ref.shape or P.ndim != 2:
        raise ValueError(f"P must be [T, d] like P_ref; got {P.shape} and {P_ref.shape}")
    return {
        "params": float(np.max(relative_gaps(params, params_ref))),
        "P": float(np.max(np.max(np.abs(P - P_ref), axis=1) / np.max(P_ref, axis=1))),
    }


def richardson(coarse: Any, fine: Any, order: int = 1) -> Any:
    """One Richardson step from runs at step η (``coarse``) and η/2 (``fine``) whose error is
    ``c(t)·η^order + O(η^(order+1))``:

        R = (2^order · fine − coarse) / (2^order − 1)

    removes the η^order term. GD is the flow's explicit Euler scheme, of order 1
    (docs/theory.md §1), so ``richardson(GD(η), GD(η/2))`` = 2·GD(η/2) − GD(η) is of order 2.

    >>> float(richardson(np.array(1.0 + 0.1), np.array(1.0 + 0.05)))
    1.0
    """
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive integer; got {order!r}")
    k = 2**order
    if k == 2:  # the same arithmetic as 2·fine − coarse, without a division by 1
        return jax.tree.map(lambda x, y: 2 * y - x, coarse, fine)
    return jax.tree.map(lambda x, y: (k * y - x) / (k - 1), coarse, fine)


def richardson_reference(runs: Sequence[Any]) -> tuple[Any, np.ndarray | None]:
    """Reference trajectory from first-order runs at η, η/2 (and η/4), with its uncertainty.

    Two runs: ``R(η) = 2·GD(η/2) − GD(η)`` (error O(η²)); no uncertainty (None). Three runs: the
    second level ``(4·R(η/2) − R(η))/3`` (error O(η³)), and as its uncertainty per save time
    ``‖R(η/2) − reference‖ / ‖reference‖`` (`relative_gaps`).
    """
    if len(runs) not in (2, 3):
        raise ValueError(f"richardson_reference takes 2 or 3 runs (η, η/2[, η/4]); got {len(runs)}")
    first = richardson(runs[0], runs[1])
    if len(runs) == 2:
        return first, None
    second = richardson(runs[1], runs[2])
    reference = richardson(first, second, order=2)
    return reference, relative_gaps(second, reference)


def resolved_window(gd_snapshots: Sequence[Any], ratio: float = 0.75) -> int:
    """Save times (a prefix of the grid) on which GD at η, η/2, η/4 converges at first order:
    the longest prefix on which

        ‖GD(η/2) − GD(η/4)‖ ≤ ratio · ‖GD(η) − GD(η/2)‖      (½ for an exact first-order error)

    wherever the first gap is above rounding (1e-12, relative). Past it, halving η does not
    shrink GD's change: the trajectory is not resolved at these steps (docs/theory.md §8.1) and
    no error against it means anything. Returns the number of save times in the window (≥ 1:
    t = 0, where every run starts from the same point).
    """
    if len(gd_snapshots) != 3:
        raise ValueError(f"resolved_window takes GD at η, η/2, η/4; got {len(gd_snapshots)} runs")
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be in (0, 1); got {ratio}")
    first = relative_gaps(gd_snapshots[0], gd_snapshots[1])
    second = relative_gaps(gd_snapshots[1], gd_snapshots[2])
    bad = (first > 1e-12) & (second > ratio * first)
    return int(np.argmax(bad)) if np.any(bad) else len(first)


def power_law_eta(etas: ArrayLike, errors: ArrayLike, target: float) -> float | None:
    """Step size at which the power law ``err = c·η^p``, fitted by least squares in log-log
    through the measured ``errors`` at ``etas``, equals ``target``:

        η = exp((log target − log c) / p)

    None where the error does not fall with η (p ≤ 0) or an error or the target is not > 0.

    >>> round(power_law_eta([0.1, 0.05], [0.4, 0.1], 0.025), 12)
    0.025
    """
    e, h = np.asarray(errors, np.float64), np.asarray(etas, np.float64)
    if e.shape != h.shape or e.size < 2:
        raise ValueError(f"need matching etas and errors, two or more; got {h.shape}, {e.shape}")
    if np.any(e <= 0) or not target > 0:
        return None
    p, log_c = np.polyfit(np.log(h), np.log(e), 1)
    return float(np.exp((math.log(target) - log_c) / p)) if p > 0 else None


def perturbed_start(params0: Params, epsilon: float, key: jax.Array) -> Params:
    """Every weight moved by the relative size ε:  ``θ_0 ∘ (1 + ε ξ)``, ξ ~ N(0, 1) per weight
    (zero weights stay zero)."""
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be a relative size in (0, 1); got {epsilon!r}")
    keys = jax.random.split(key, len(params0))
    return type(params0)(
        *(a * (1 + epsilon * jax.random.normal(k, a.shape, a.dtype)) for a, k in zip(params0, keys))
    )


def grown_neurons(P: ArrayLike, share: float) -> np.ndarray:
    """The grown neurons ``P_i = ‖w_i‖‖v_i‖ ≥ share·max_j P_j`` (docs/theory.md §5), as a
    boolean mask; all of them while every P_i is 0."""
    P = np.asarray(P, np.float64)
    return P >= share * P.max() if P.max() > 0 else np.ones_like(P, bool)


def gate_margins(
    snapshots: Any, x: ArrayLike, *, within: float = 1e-4, grown: float = 0.01
) -> dict:
    """How close the neurons sit to their gates' boundaries, per save time (``snapshots``
    ``(W [T, d, D], b [T, d], V [T, d, c])``; ``x`` the inputs ``[N, D]``).

    The margin of neuron i to sample n is the sine of the angle between ``w̃_i = (w_i, b_i)`` and
    the boundary ``{w̃ : w̃·x̃_n = 0}``, ``x̃_n = (x_n, 1)``:

        m_in = |w̃_i·x̃_n| / (‖w̃_i‖ ‖x̃_n‖)

    Where gate ``g_i(n)`` flips, the field jumps by ``(v_i·r_n) x̃_n / N`` (docs/theory.md §8);
    where it points into the boundary from both sides the flow slides along it at margin 0,
    while an explicit step of size η chatters across it at margins of order η (§8.1). Returns,
    per save time, ``boundary_pairs`` (pairs with ``m_in < within``) and
    ``median_closest_margin`` (median over the `grown_neurons` of ``min_n m_in``).
    """
    W, b, V = (np.asarray(a, np.float64) for a in snapshots)
    x = np.asarray(x, np.float64)
    if W.ndim != 3 or b.shape != W.shape[:2] or V.shape[:2] != W.shape[:2]:
        raise ValueError(
            f"snapshots must be W [T, d, D], b [T, d], V [T, d, c]; got {W.shape}, {b.shape}, "
            f"{V.shape}"
        )
    if x.ndim != 2 or x.shape[1] != W.shape[2]:
        raise ValueError(f"x must be [N, {W.shape[2]}]; got {x.shape}")
    x_norm = np.sqrt(np.sum(x * x, axis=1) + 1.0)
    pairs, closest = [], []
    for t in range(W.shape[0]):
        w_norm = np.sqrt(np.sum(W[t] ** 2, axis=1) + b[t] ** 2)
        margin = np.abs(x @ W[t].T + b[t]) / (
            x_norm[:, None] * np.where(w_norm > 0, w_norm, 1.0)
        )  # [N, d]
        big = grown_neurons(
            np.linalg.norm(W[t], axis=1) * np.linalg.norm(V[t].reshape(V.shape[1], -1), axis=1),
            grown,
        )
        pairs.append(int(np.sum(margin < within)))
        closest.append(float(np.median(margin.min(axis=0)[big])))
    return {"within": within, "boundary_pairs": pairs, "median_closest_margin": closest}


def gate_chatter(
    params: Any,
    eta: float,
    data: TrainingData,
    *,
    steps: int = 40,
    every: float = 0.25,
    grown: float = 0.01,
) -> dict:
    """GD at η for ``steps`` more steps from ``params``: how often each gate ``g_i(n)`` flips.

        flips_in = #{k < steps : g_i(n) at step k+1 ≠ g_i(n) at step k}

    A neuron that the flow holds on a gate boundary is flipped back and forth across it by the
    explicit step (docs/theory.md §8.1): that (neuron, sample) gate flips at a large share of
    the steps. Returns the pairs with ``flips_in ≥ 1`` (``pairs_flipping``) and
    ``flips_in ≥ every·steps`` (``pairs_chattering``), and how many of the `grown_neurons` at
    the start have such a pair (``grown_chattering`` of ``grown``).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    p = Params(*(jnp.asarray(a) for a in params))
    traj = train_gd(
        p,
        data,
        learning_rate=eta,
        throw=False,
        config=SGDConfig(steps=steps, record_every=1, snapshot_every=1),
    )
    assert traj.snapshots is not None  # snapshot_every=1 records them
    gates = jax.vmap(lambda q: gating_pattern(q, data.x))(traj.snapshots)  # [steps + 1, N, d]
    flips = np.asarray(jnp.sum(gates[1:] != gates[:-1], axis=0))  # [N, d]
    big = grown_neurons(np.asarray(traj.observables.P, np.float64)[0], grown)
    chattering = flips >= every * steps
    return {
        "steps": steps,
        "pairs_flipping": int(np.sum(flips > 0)),
        "pairs_chattering": int(np.sum(chattering)),
        "grown": int(big.sum()),
        "grown_chattering": int(np.sum(np.any(chattering[:, big], axis=0))),
    }


def norms_balance_drift(w_norm: ArrayLike, v_norm: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Relative balance drift per neuron (docs/theory.md §2) from recorded ``‖w_i‖``, ``‖v_i‖``,
    ``b_i`` ``[T, d]``:

        Q_i = ‖w_i‖² + b_i² − ‖v_i‖²
        drift_i = max_t |Q_i(t) − Q_i(0)| / max_t (‖w_i‖² + b_i² + ‖v_i‖²)
    """
    w, v, bias = (np.asarray(a, np.float64) for a in (w_norm, v_norm, b))
    q = w**2 + bias**2 - v**2
    return np.max(np.abs(q - q[:1]), axis=0) / np.max(w**2 + bias**2 + v**2, axis=0)

"""Trajectory summaries shared by the demo, reports and checks (pure NumPy on recorded arrays)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MIN_LOSS_FALL = 0.1  # a loss drop is a fall of at least this fraction of L(0) (`loss_drop`)


def _half_fall_time(t: np.ndarray, loss: np.ndarray, fraction: float) -> float:
    """min{t : L(t) <= L(0) − fraction·(L(0) − min_t L)} over the finite records."""
    finite = np.isfinite(loss)
    l0, lmin = loss[0], np.min(loss[finite])
    hit = np.nonzero(finite & (loss <= l0 - fraction * (l0 - lmin)))[0]
    return float(t[hit[0]]) if hit.size else float("nan")


class LossDrop(NamedTuple):
    """Whether and when the loss dropped: ``time`` is None when it did not, and ``reason`` says why.

    Attributes:
        time: loss-drop time (first t with L(t) ≤ L(0) − ½ (L(0) − min L)), or None.
        reason: empty when the loss dropped; otherwise why no drop is reported.
    """

    time: float | None
    reason: str


def loss_drop(t, loss, *, min_fall: float = MIN_LOSS_FALL, fraction: float = 0.5) -> LossDrop:
    """The loss-drop time of one run, reported only when the loss did drop.

    The drop time is measured against the lowest loss reached, so a loss that barely moves
    (0.693 → 0.690) would still get one. A drop therefore needs the loss to have fallen by at
    least ``min_fall`` of its initial value, (L(0) − min_t L) ≥ min_fall · L(0) (default 10%;
    at a tiny initialisation o ≈ 0, so L(0) ≈ log 2, docs/theory.md §1, and the drop of §4–§5
    takes the loss far below that).

    Returns:
        `LossDrop`: the time, or None with the reason (no finite loss; the loss never fell
        below L(0); it fell by less than ``min_fall`` of L(0)).
    """
    if not 0 < min_fall < 1:
        raise ValueError(f"min_fall must be a fraction in (0, 1); got {min_fall!r}.")
    t = np.asarray(t, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    finite = np.isfinite(loss)
    if not finite.any() or not finite[0]:
        return LossDrop(None, "no finite loss at the start of the run")
    l0, lowest = float(loss[0]), float(np.min(loss[finite]))
    if not lowest < l0:
        return LossDrop(None, f"the loss never fell below its initial value L(0) = {l0:.4g}")
    fall = (l0 - lowest) / abs(l0) if l0 != 0 else np.inf
    if fall < min_fall:
        return LossDrop(
            None,
            f"the loss fell by only {fall:.2%} of L(0) = {l0:.4g} (lowest {lowest:.4g} by "
            f"t = {t[-1]:.4g}); a drop is a fall of at least {min_fall:.0%}",
        )
    return LossDrop(_half_fall_time(t, loss, fraction), "")


def loss_drop_time(t, loss, *, fraction: float = 0.5, min_fall: float = MIN_LOSS_FALL) -> float:
    """First time the loss has fallen by ``fraction`` of its total decrease,

        t_drop = min{t : L(t) <= L(0) − fraction·(L(0) − min_t L)},

    or NaN when the loss did not drop (`loss_drop`: it must fall by ``min_fall`` of L(0)).

    Example:
        >>> t = np.arange(5.0)
        >>> loss_drop_time(t, [0.69, 0.69, 0.3, 0.1, 0.1]), loss_drop_time(t, [0.69] * 4 + [0.68])
        (2.0, nan)
    """
    drop = loss_drop(t, loss, min_fall=min_fall, fraction=fraction)
    return float("nan") if drop.time is None else drop.time


def race_winners(P_final, *, share: float = 0.9) -> np.ndarray:
    """Indices of the fewest neurons whose P_i = ‖w_i‖‖v_i‖ add up to ``share`` of Σ_j P_j.

    The race of docs/theory.md §5 makes this set small: early winners grow exponentially and starve
    the
    rest, so a few neurons carry most of the norm.
    """
    P = np.asarray(P_final, dtype=np.float64)
    order = np.argsort(P)[::-1]
    cumulative = np.cumsum(P[order])
    if cumulative[-1] <= 0:
        return np.zeros(0, dtype=int)
    k = int(np.searchsorted(cumulative, share * cumulative[-1]) + 1)
    return np.sort(order[:k])

"""The record every trainer returns, and its status codes."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.core
import numpy as np

from ._network import Params
from ._observables import Observables

# Per-run status codes. A failing seed in a vmapped sweep is a value, not an exception.
OK = 0
MAX_STEPS_REACHED = 1
SOLVER_FAILED = 2
NON_FINITE = 3
SLIDING_OVERFLOW = 4
DEAD = 5
LOSS_ROSE = 6

# The relative rise of the loss between save times above which a gradient-flow solve fails: the
# exact flow never raises L; float32 rounding of L is ~1e-7 of it.
LOSS_RISE_TOLERANCE = 1e-4

STATUS_MESSAGES = {
    OK: "ok",
    MAX_STEPS_REACHED: "the ODE solver used up max_steps before reaching the last save time "
    "(raise max_steps, loosen rtol/atol, or shorten the time grid)",
    SOLVER_FAILED: "the ODE solver failed (step size collapsed or non-finite state)",
    NON_FINITE: "parameters became NaN or inf (diverged: lower the learning rate, or the "
    "constant step dt0 of an ODE solver)",
    SLIDING_OVERFLOW: "more pairs of one neuron reached their gate boundaries in one step than "
    "the sliding solver holds, even at its shortest step (raise FlowConfig.sliding_capacity or "
    "sliding_halvings, or lower dt0)",
    DEAD: "every neuron is inactive on every training sample (dead network: lower the learning "
    "rate or raise σ)",
    LOSS_ROSE: "the loss rose between save times, which the gradient flow never does: the "
    "constant step is too large for the flow there (lower dt0)",
}


class Trajectory(NamedTuple):
    """A recorded run.

    Attributes:
        t: flow time of each record ``[T]``; for SGD/GD ``t = k·η/(1−β)`` after k steps.
        observables: `Observables` with a leading ``[T]`` axis.
        snapshot_t: flow times of the full-parameter snapshots ``[K]`` (init and end included).
        snapshots: `Params` with a leading ``[K]`` axis.
        status: int32 code (`OK`, `MAX_STEPS_REACHED`, `SOLVER_FAILED`, `NON_FINITE`,
            `SLIDING_OVERFLOW`, `LOSS_ROSE`; a sweep adds `DEAD`, see `gflow._sweep.run_member`).
        num_steps: solver steps (flow) or optimiser steps (SGD/GD) taken.
        sliding: the sliding solver's `gflow._sliding.SlidingRecord` (sliding pairs per neuron,
            crossings, overflow, dissipation, sliding sets at snapshots); None for other trainers.

    Under ``jax.vmap`` every field gains a leading seed axis.
    """

    t: jax.Array
    observables: Observables
    snapshot_t: jax.Array
    snapshots: Params
    status: jax.Array
    num_steps: jax.Array
    sliding: Any = None

    @property
    def final_params(self) -> Params:
        """Parameters at the last snapshot (the end of the run), per seed if vmapped."""
        seed_axes = np.ndim(self.status)
        return jax.tree.map(lambda a: a[(slice(None),) * seed_axes + (-1,)], self.snapshots)


def status_message(status) -> str:
    """Human-readable description of a status code (or of the worst of several)."""
    codes = np.atleast_1d(np.asarray(status))
    bad = sorted(set(int(c) for c in codes if int(c) != OK))
    if not bad:
        return STATUS_MESSAGES[OK]
    parts = []
    for code in bad:
        n = int(np.sum(codes == code))
        prefix = f"{n} of {codes.size} runs: " if codes.size > 1 else ""
        parts.append(prefix + STATUS_MESSAGES.get(code, f"unknown status {code}"))
    return "; ".join(parts)


class TrajectoryError(RuntimeError):
    """Raised when a single (non-vmapped) run did not finish cleanly."""


def raise_if_failed(traj: Trajectory) -> Trajectory:
    """Raise `TrajectoryError` if any run of ``traj`` has a non-OK status; else return it."""
    status = traj.status
    if isinstance(status, jax.core.Tracer):
        return traj
    if np.any(np.asarray(status) != OK):
        raise TrajectoryError(status_message(status))
    return traj

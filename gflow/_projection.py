"""Balance projection for explicit solvers of the flow (docs/theory.md §2).

The flow conserves every ``Q_i = ‖w_i‖² + b_i² − ‖v_i‖²``; an explicit Runge–Kutta step does not
(Heun at h = 0.125 on the CIFAR task N = 800, d = 300 moves Q_i by up to 2e-4 of the neuron's
size per step, 0.18 over the loss drop). `BalanceProjection` wraps such a solver and, after
every step, moves each neuron back onto its balance at the start of the solve along its
rescaling orbit (the start's, not the step's: rounding then does not accumulate from step to
step, which in float32 would drift by ~1e-4 over 6000 steps):

    (w_i, b_i, v_i) → (c_i w_i, c_i b_i, v_i / c_i),   c_i² = u > 0 the root of
    a_i u² − Q_i u − ‖v_i‖² = 0,   a_i = ‖w_i‖² + b_i²   (so that c_i² a_i − ‖v_i‖²/c_i² = Q_i).

By positive homogeneity of the ReLU the network function, its loss and its gates are unchanged
by the rescaling: only the split of each neuron's size between its two layers is corrected.
``c_i − 1`` is of the order of the step's defect, i.e. of its local error, so the method keeps
its order (projection methods: Hairer, Lubich & Wanner, *Geometric Numerical Integration*,
§IV.4). The balance then drifts only by rounding; the defect the projection removed is reported
(`FlowStats.balance_defect_max`), as a measure of the explicit step's own error.
"""

from __future__ import annotations

from typing import ClassVar

import diffrax
import jax.numpy as jnp

from ._network import Params, balance


def balance_scale(params: Params, q):
    """The factors ``c_i`` ``[d]`` of `rescale_to_balance` (module doc)."""
    a = jnp.sum(params.W**2, axis=1) + params.b**2
    return balance_scale_of(a, jnp.sum(params.V**2, axis=1), q)


def balance_scale_of(a, v2, q):
    """`balance_scale` from each neuron's ``a = ‖w_i‖² + b_i²`` and ``v2 = ‖v_i‖²`` ``[d]``: the
    c with ``c² a − v2 / c² = q``.

    The root ``u = c²`` is taken in the form without cancellation: ``(Q + s)/(2a)`` for Q ≥ 0,
    ``2‖v‖²/(s − Q)`` for Q < 0, with ``s = sqrt(Q² + 4a‖v‖²)``.
    """
    s = jnp.sqrt(q * q + 4.0 * a * v2)
    u = jnp.where(q >= 0, (q + s) / (2.0 * a), 2.0 * v2 / (s - q))
    return jnp.sqrt(u)


def rescaled(params: Params, c) -> Params:
    """Each neuron ``(w_i, b_i, v_i) → (c_i w_i, c_i b_i, v_i / c_i)`` for ``c`` ``[d]`` > 0: the
    network function and its gates are unchanged."""
    return Params(W=params.W * c[:, None], b=params.b * c, V=params.V / c[:, None])


def rescale_to_balance(params: Params, q) -> Params:
    """`rescaled` so that each neuron's balance is ``q_i`` ``[d]`` (module doc,
    `balance_scale`)."""
    return rescaled(params, balance_scale(params, q))


def balance_defect(before: Params, after: Params):
    """``max_i |Q_i(after) − Q_i(before)| / (‖w_i‖² + b_i² + ‖v_i‖²)(after)``: a step's relative
    balance defect."""
    size = jnp.sum(after.W**2, axis=1) + after.b**2 + jnp.sum(after.V**2, axis=1)
    return jnp.max(jnp.abs(balance(after) - balance(before)) / size)


class BalanceProjection(diffrax.AbstractSolver):
    """An explicit solver whose every step ends with `rescale_to_balance` to the balance at the
    start of the solve (module doc). State: ``(inner state, largest relative one-step defect
    so far, the balance Q(y_0) at the start of the solve)``.

    The wrapped solver must not carry the field at the step's end to the next step (FSAL: its
    stored value would belong to the point before the projection): Euler, Heun, Midpoint,
    Ralston. Saved states should be step end points (`gflow._gauss.SaveTimeStepSize`).

    Attributes:
        solver: the wrapped explicit solver.
    """

    solver: diffrax.AbstractSolver

    term_structure: ClassVar = diffrax.AbstractTerm

    def __check_init__(self):
        tableau = getattr(self.solver, "tableau", None)
        if tableau is not None and tableau.fsal:
            raise ValueError(
                f"BalanceProjection needs a solver without FSAL; got {type(self.solver).__name__}."
            )

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

    def order(self, terms):
        return self.solver.order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(terms, t0, t1, y0, args), jnp.zeros((), y0.W.dtype), balance(y0)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner, defect, q_start = solver_state
        y1, error, dense, inner, result = self.solver.step(
            terms, t0, t1, y0, args, inner, made_jump
        )
        defect = jnp.maximum(defect, balance_defect(y0, y1))
        y1 = rescale_to_balance(y1, q_start)
        if isinstance(dense, dict) and "y1" in dense:
            dense = dict(dense, y1=y1)
        return y1, error, dense, (inner, defect, q_start), result

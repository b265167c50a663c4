"""Gauss–Legendre collocation for the gradient flow, as a diffrax solver (docs/theory.md §1, §2).

An s-stage method with step h and tableau ``(A, b, c)`` solves for stage values

    Y_j = y_0 + h Σ_l a_jl f(Y_l),   j = 1..s,        y_1 = y_0 + h Σ_j b_j f(Y_j)

(s = 1: the implicit midpoint rule, order 2; s = 2: order 4 on smooth pieces). Every balance
``Q_i`` is conserved for any step size, since each frozen-gate field ``f_g`` has
``Q_i'·f_g = 0``; given a `GatedField`, each stage's gates are ramps in a band ``δ ∝ h`` around
their hyperplanes, fixed once per step from the predicted stage; the stages are solved by
Anderson-accelerated fixed-point iteration. Why an implicit method, the exact balance, the gates
within a step and the stage solve: docs/numerics.md §1. Saved states should be step end points
(`SaveTimeStepSize`): the linear interpolation between steps does not conserve Q.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

_SQRT3 = math.sqrt(3.0)
# Butcher tableaus (A, b, c) of the Gauss–Legendre methods.
TABLEAUS = {
    1: (np.array([[0.5]]), np.array([1.0]), np.array([0.5])),
    2: (
        np.array([[0.25, 0.25 - _SQRT3 / 6.0], [0.25 + _SQRT3 / 6.0, 0.25]]),
        np.array([0.5, 0.5]),
        np.array([0.5 - _SQRT3 / 6.0, 0.5 + _SQRT3 / 6.0]),
    ),
}


def default_stage_rtol(dtype) -> float:
    """``max(1e-10, 100 ε)``: 1e-10 in float64 (balance drift ~1e-13 measured), 1.2e-5 in
    float32."""
    return max(1e-10, 100 * float(jnp.finfo(dtype).eps))


class GatedField(eqx.Module):
    """A vector field with switches (gates), and what to hold fixed about them during a step.

    Attributes:
        hold: ``hold(t, y, args, k, width) -> (held, fractional)``: what to hold fixed for a
            stage predicted at y with derivative k (pytrees like y), the stage standing for a
            sub-step of length ``width``; and a count of switches caught mid-way (statistics).
        field: ``field(t, y, args, held) -> f(y)``: the field at y given ``held``. It must equal
            the true field away from switches, and ``Q'(y)·f(y) = 0`` must hold at every y for
            the balance to be conserved.
        magnitude: optional ``magnitude(y) -> m`` (a pytree like y, ≥ 0): the size each
            component's error is measured against in the stage tolerance (default ``|y|``).
            Componentwise ``|y|`` is needlessly strict for an entry that happens to be near 0 in
            a large block; the gradient flow uses each neuron's RMS entry.
    """

    hold: Callable[..., Any]
    field: Callable[..., Any]
    magnitude: Callable[..., Any] | None = None


class GaussState(NamedTuple):
    """Solver state carried between steps (diffrax keeps the old one when a step is rejected).

    Attributes:
        tau: times ``[2]`` of the two latest stage derivatives (predictor nodes).
        k: those stage derivatives, flattened ``[2, n]``.
        evaluations: vector-field evaluations of accepted steps (the one in `init` included).
        iterations_max: most stage-solve sweeps taken by one accepted step.
        fractional_gates: switches caught mid-way by accepted steps (`GatedField.hold`'s count;
            for the flow: predicted stage pre-activations inside their band), summed over steps
            and stages.
        residual_max: largest scaled stage residual of an accepted step (≤ 1 when all solved).
    """

    tau: jax.Array
    k: jax.Array
    evaluations: jax.Array
    iterations_max: jax.Array
    fractional_gates: jax.Array
    residual_max: jax.Array


class GaussLegendre(diffrax.AbstractAdaptiveSolver):
    """s-stage Gauss–Legendre collocation (order 2s), Anderson-accelerated stage solve.

    Attributes:
        stages: 1 (implicit midpoint, order 2) or 2 (order 4).
        stage_rtol, stage_atol: componentwise tolerance of the stage equations: each residual
            component within ``stage_atol + stage_rtol·|y_0|``. Defaults: ``stage_rtol =
            max(1e-10, 100 ε)`` of the state's dtype (1e-10 in float64, 1.2e-5 in float32);
            ``stage_atol = stage_rtol · RMS(y_0)`` of the current step.
        max_iterations: stage-solve sweeps per step (each costs ``stages`` evaluations).
        anderson_memory: residual differences kept by Anderson acceleration (0: plain
            fixed-point iteration).
        gated: optional `GatedField`: hold its gates fixed within each step (docs/numerics.md
            §1.3).

    Example:
        >>> solver = GaussLegendre(stages=2)
        >>> sol = diffrax.diffeqsolve(diffrax.ODETerm(lambda t, y, a: -y), solver, 0.0, 1.0, 0.1,
        ...                           jnp.array([1.0]))
        >>> abs(float(sol.ys[0, 0]) - math.exp(-1.0)) < 1e-5
        True
    """

    stages: int = eqx.field(static=True, default=1)
    stage_rtol: float | jax.Array | None = None
    stage_atol: float | jax.Array | None = None
    max_iterations: int = eqx.field(static=True, default=50)
    anderson_memory: int = eqx.field(static=True, default=8)
    gated: GatedField | None = None

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., diffrax.LocalLinearInterpolation]] = (
        diffrax.LocalLinearInterpolation
    )

    def __check_init__(self):
        if self.stages not in TABLEAUS:
            raise ValueError(f"stages must be one of {sorted(TABLEAUS)}; got {self.stages!r}.")
        for name, low in (("max_iterations", 1), ("anderson_memory", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")

    def order(self, terms):
        return 2 * self.stages

    def error_order(self, terms):
        # Corrector minus linear-extrapolation predictor is O(h³) per step, whatever s.
        return 3

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def init(self, terms, t0, t1, y0, args) -> GaussState:
        flat, _ = ravel_pytree(y0)
        k0, _ = ravel_pytree(terms.vf(t0, y0, args))
        dt = jnp.asarray(t1 - t0, flat.dtype)
        # Two predictor nodes with equal derivatives: constant extrapolation on the first step.
        tau = jnp.stack([jnp.asarray(t0, flat.dtype) - dt, jnp.asarray(t0, flat.dtype)])
        zero = jnp.asarray(0, jnp.int32)
        return GaussState(
            tau=tau,
            k=jnp.stack([k0, k0]),
            evaluations=jnp.asarray(1, jnp.int32),
            iterations_max=zero,
            fractional_gates=zero,
            residual_max=jnp.asarray(0.0, flat.dtype),
        )

    def step(self, terms, t0, t1, y0, args, solver_state: GaussState, made_jump):
        del made_jump  # the predictor only sets the first guess; a jump just costs sweeps
        a_np, b_np, c_np = TABLEAUS[self.stages]
        y0_flat, unravel = ravel_pytree(y0)
        dtype = y0_flat.dtype
        a, b, c = (jnp.asarray(m, dtype) for m in (a_np, b_np, c_np))
        h = jnp.asarray(t1 - t0, dtype)
        stage_t = jnp.asarray(t0, dtype) + c * h

        # Predictor: linear extrapolation of the latest two stage derivatives to the new stages.
        tau, k_old = solver_state.tau, solver_state.k
        slope = (k_old[1] - k_old[0]) / (tau[1] - tau[0])
        k_pred = k_old[1][None, :] + (stage_t - tau[1])[:, None] * slope[None, :]
        z0 = h * (a @ k_pred)

        gated = self.gated
        if gated is None:
            fractional = jnp.asarray(0, jnp.int32)

            def open_field(j, y):
                return terms.vf(stage_t[j], y, args)

            stage_field = open_field
        else:
            held = [
                gated.hold(stage_t[j], unravel(y0_flat + z0[j]), args, unravel(k_pred[j]), h * b[j])
                for j in range(self.stages)
            ]
            fractional = sum(count for _, count in held)

            def held_field(j, y):
                return gated.field(stage_t[j], y, args, held[j][0])

            stage_field = held_field

        def sweep(z):
            """Stage derivatives ``[s, n]`` at ``y_0 + z`` (gates held)."""
            return jnp.stack(
                [
                    ravel_pytree(stage_field(j, unravel(y0_flat + z[j])))[0]
                    for j in range(self.stages)
                ]
            )

        rtol = default_stage_rtol(dtype) if self.stage_rtol is None else self.stage_rtol
        atol = rtol * jnp.sqrt(jnp.mean(y0_flat**2)) if self.stage_atol is None else self.stage_atol
        if self.gated is not None and self.gated.magnitude is not None:
            magnitude = ravel_pytree(self.gated.magnitude(y0))[0]
        else:
            magnitude = jnp.abs(y0_flat)
        scale = atol + rtol * magnitude
        out = _stage_solve(sweep, z0, a, h, scale, self.max_iterations, self.anderson_memory)
        converged = out.residual <= 1.0
        y1 = unravel(y0_flat + h * (b @ out.k))
        error = jnp.where(converged, h * (b @ (out.k - k_pred)), jnp.inf)
        if self.stages == 1:
            new_tau, new_k = jnp.stack([tau[1], stage_t[0]]), jnp.stack([k_old[1], out.k[0]])
        else:
            new_tau, new_k = stage_t, out.k
        state = GaussState(
            tau=new_tau,
            k=new_k,
            evaluations=solver_state.evaluations + self.stages * out.sweeps,
            iterations_max=jnp.maximum(solver_state.iterations_max, out.sweeps),
            fractional_gates=solver_state.fractional_gates + fractional,
            residual_max=jnp.maximum(solver_state.residual_max, out.residual),
        )
        result = diffrax.RESULTS.where(
            converged,
            diffrax.RESULTS.successful,
            diffrax.RESULTS.nonlinear_divergence,  # pyright: ignore[reportArgumentType]
        )  # (equinox types each enumeration item as its own Literal)
        return y1, unravel(error), dict(y0=y0, y1=y1), state, result


class _StageSolution(NamedTuple):
    z: jax.Array  # stage increments Y_j − y_0 ``[s, n]`` of the last sweep
    k: jax.Array  # f at those stages ``[s, n]``
    residual: jax.Array  # max |h A k − z| / scale
    sweeps: jax.Array


def _stage_solve(sweep, z0, a, h, scale, max_iterations: int, memory: int) -> _StageSolution:
    """Solve ``Z = G(Z) = h A f(y_0 + Z)`` by Anderson-accelerated fixed-point iteration.

    Anderson step (type II, Walker & Ni 2011), in units of ``scale``: with the residual
    ``r_k = G(z_k) − z_k`` and the last m differences ``ΔR``, ``ΔG`` of residuals and images,
    ``γ = argmin ‖r_k − ΔR γ‖₂`` and ``z_{k+1} = G(z_k) − ΔG γ``. The returned ``k`` is
    evaluated at the returned ``z``, so the balance identity holds at the very point used. A
    solve that runs out of sweeps returns its last iterate, with its residual (> 1).
    """
    s, n = z0.shape
    dtype = z0.dtype
    m = max(memory, 1)
    inv_scale = 1.0 / scale
    eye = jnp.eye(m, dtype=dtype)

    def scaled_norm(r):
        return jnp.max(jnp.abs(r) * inv_scale[None, :])

    k0 = sweep(z0)
    g0 = h * (a @ k0)
    r0 = g0 - z0
    res0 = scaled_norm(r0)
    # History as [m, s·n] rows and its Gram matrix, updated one row per sweep (matrix-vector
    # products only: a full m×m Gram per sweep costs more than a gradient at large n).
    zeros = jnp.zeros((m, s * n), dtype)
    carry0 = dict(
        sweeps=jnp.asarray(1, jnp.int32),
        z=g0,
        g_prev=g0,
        r_prev=r0,
        dg=zeros,
        dr=zeros,
        gram=jnp.zeros((m, m), dtype),
        n_hist=jnp.asarray(0, jnp.int32),
        z_eval=z0,
        k_eval=k0,
        res=res0,
        best=res0,
    )

    def cond(c):
        return (c["sweeps"] < max_iterations) & (c["res"] > 1.0)

    def body(c):
        z = c["z"]
        k = sweep(z)
        g = h * (a @ k)
        r = g - z
        res = scaled_norm(r)
        dg, dr, gram, n_hist = c["dg"], c["dr"], c["gram"], c["n_hist"]
        if memory == 0:
            z_next = g
        else:
            slot = n_hist % m
            new_dr = ((r - c["r_prev"]) * inv_scale[None, :]).reshape(s * n)
            dg = dg.at[slot].set((g - c["g_prev"]).reshape(s * n))
            dr = dr.at[slot].set(new_dr)
            dots = dr @ new_dr
            gram = gram.at[slot, :].set(dots).at[:, slot].set(dots)
            n_hist = n_hist + 1
            filled = jnp.arange(m) < jnp.minimum(n_hist, m)
            # γ by normal equations on unit-norm columns (the residual falls by orders of
            # magnitude within the memory), lightly regularised; m is small.
            rhs = dr @ (r * inv_scale[None, :]).reshape(s * n)
            norms = jnp.sqrt(jnp.diagonal(gram))
            ok = filled & (norms > 0)
            inv_norms = jnp.where(ok, 1.0 / jnp.where(ok, norms, 1.0), 0.0)
            unit_gram = jnp.where(
                ok[:, None] & ok[None, :], gram * inv_norms[:, None] * inv_norms[None, :], eye
            )
            gamma = (
                jnp.linalg.solve(unit_gram + 1e3 * jnp.finfo(dtype).eps * eye, rhs * inv_norms)
                * inv_norms
            )
            z_next = g - (gamma @ dg).reshape(s, n)
            # If the acceleration made things much worse, forget the history: plain sweep.
            astray = res > 1e4 * c["best"]
            z_next = jnp.where(astray, g, z_next)
            n_hist = jnp.where(astray, 0, n_hist)
        return dict(
            sweeps=c["sweeps"] + 1,
            z=z_next,
            g_prev=g,
            r_prev=r,
            dg=dg,
            dr=dr,
            gram=gram,
            n_hist=n_hist,
            z_eval=z,
            k_eval=k,
            res=res,
            best=jnp.minimum(res, c["best"]),
        )

    c = jax.lax.while_loop(cond, body, carry0)
    return _StageSolution(z=c["z_eval"], k=c["k_eval"], residual=c["res"], sweeps=c["sweeps"])


def equal_steps(span, dt):
    """``n = ⌈span/dt⌉`` (at least 1): the number of equal steps of at most ``dt·(1 + 1e-6)`` that
    cover ``span``, so that rounding in the save times never adds a step."""
    return jnp.maximum(jnp.ceil(span / dt - 1e-6), 1.0)


class SaveTimeStepSize(diffrax.AbstractStepSizeController):
    """Steps of at most ``dt`` that land exactly on every time in ``step_ts``.

    Between consecutive times ``T_k < T_{k+1}`` the interval is cut into
    ``n = ⌈(T_{k+1} − T_k)/dt⌉`` equal steps: no sliver steps, and every saved state is a step
    end point (never an interpolation, which would not conserve the balance). Pass the save
    times, sorted; ``dt0`` of `diffrax.diffeqsolve` must be None.

    A step whose error estimate is not finite (`GaussLegendre` returns ``inf`` when its stage
    equations were not solved, e.g. where ``h·λ_max(∇²L)`` has grown past what the stage solve
    handles) is rejected and retried at half its length, up to ``max_halvings`` times; the
    steps after it return to ``dt``. A step still failing at ``dt / 2^max_halvings`` is accepted
    with the solver's failure, which stops the solve.
    """

    dt: float | jax.Array
    step_ts: jax.Array
    max_halvings: int = eqx.field(static=True, default=6)

    def wrap(self, direction):
        return self

    def _next(self, t):
        ts = self.step_ts
        k = jnp.searchsorted(ts, t, side="right")
        target = ts[jnp.minimum(k, ts.shape[0] - 1)]
        remaining = target - t
        n = equal_steps(remaining, self.dt)
        return jnp.where(n <= 1, target, t + remaining / n)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        del terms, t1, y0, args, func, error_order
        if dt0 is not None:
            raise ValueError("SaveTimeStepSize sets its own steps: pass dt0=None to diffeqsolve.")
        return self._next(t0), None

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        del y0, y1_candidate, args, error_order
        # A solver without an error estimate (y_error None: Euler) never asks for a retry.
        solved = jnp.all(
            jnp.stack(
                [jnp.asarray(True)] + [jnp.all(jnp.isfinite(e)) for e in jax.tree.leaves(y_error)]
            )
        )
        floor = self.dt * 0.5**self.max_halvings * (1 + 1e-6)
        keep = solved | (t1 - t0 <= floor)
        t_next = jnp.where(keep, self._next(t1), t0 + 0.5 * (t1 - t0))
        return (
            keep,
            jnp.where(keep, t1, t0),
            t_next,
            False,
            controller_state,
            diffrax.RESULTS.successful,
        )

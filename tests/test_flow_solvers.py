"""Gauss–Legendre solvers of the gradient flow (`gflow.solvers`): exact balance through gate
crossings at large steps, order on a smooth segment, agreement with Tsit5, options.

All problems have the size of `_kinked_problem` (12 samples in 4 dimensions, 3 neurons), so
that compiled programs are shared between tests: `_gauss_solve` takes the step and the end time
as traced values (one compilation per number of stages), the Tsit5 references are the public
solve of `_tsit5_reference` (also the one whose tolerances are re-used in
`test_new_tolerances_and_step_sizes_reuse_the_compiled_solve`), and the large-step problem's
public ``gauss1`` solve serves both the balance test and the dt0 test."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import gflow
from gflow.network import balance, gating_pattern
from gflow.solvers import (
    GATES,
    OK,
    GaussLegendre,
    SaveTimeStepSize,
    banded_field,
    gated_field,
    gated_loss,
    ramp_gates,
    vector_field,
)


def _kinked_problem():
    """12 samples in 4 dims, 3 neurons at σ = 1: no gate changes on [0, 0.4], two on [0.5, 0.8]."""
    data = gflow.training_data(gflow.gaussian_clusters(n_samples=12, dim=4, seed=1), jnp.float64)
    p0 = gflow.init_params(jax.random.key(1), 3, 4, 1.0, dtype=jnp.float64)
    return data, p0


def _large_step_problem():
    """The kinked problem's samples, 3 neurons at σ = 0.1 (init key 2), saved at t = 0, 1, ...,
    30: through the loss drop (0.69 → 0.025) and 26 gate flips between save times."""
    data, _ = _kinked_problem()
    p0 = gflow.init_params(jax.random.key(2), 3, 4, 0.1, dtype=jnp.float64)
    return data, p0, np.linspace(0.0, 30.0, 31)


def _gauss1_constant(dt0):
    """Implicit midpoint at constant steps through the public entry point (dt0 is traced)."""
    return gflow.FlowConfig(solver="gauss1", adaptive=False, dt0=dt0)


def _tsit5_reference(p0, data, t1, rtol=1e-12, atol=1e-13) -> gflow.Trajectory:
    """Tsit5 through the public entry point, saved at 5 times on [0, t1] (tolerances traced)."""
    ts = jnp.linspace(0.0, t1, 5)
    traj = gflow.gradient_flow(p0, data, ts, config=gflow.FlowConfig(rtol=rtol, atol=atol))
    assert isinstance(traj, gflow.Trajectory)
    return traj


@jax.jit(static_argnames=("stages",))
def _gauss_solve(p0, data, dt, t1, *, stages):
    """Constant steps of at most dt on [0, t1] (both traced): the result, max |Q(t) − Q(0)| over
    the steps, the final parameters (flat) and the fractional gates met."""
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        GaussLegendre(stages=stages, gated=GATES),
        0.0,
        t1,
        None,
        p0,
        args=data,
        stepsize_controller=SaveTimeStepSize(dt=dt, step_ts=jnp.stack([jnp.zeros_like(t1), t1])),
        saveat=diffrax.SaveAt(
            steps=True,
            fn=lambda t, y, args: (balance(y), ravel_pytree(y)[0]),
            solver_state=True,
        ),
        max_steps=4096,
        throw=False,
    )
    assert sol.ys is not None
    q, flat = sol.ys
    # Unused step slots are filled with inf; the last step ends at t1.
    q = jnp.where(jnp.isfinite(q), q, balance(p0)[None, :])
    final = flat[sol.stats["num_accepted_steps"] - 1]
    dq = jnp.max(jnp.abs(q - balance(p0)[None, :]))
    return sol.result, dq, final, sol.solver_state.fractional_gates


def test_gated_field_is_the_flow_field_and_conserves_balance_for_any_gates():
    """−∇L_g equals −∇L at θ's own gates; Q_i'(θ)·(−∇L_g(θ)) = 0 for arbitrary gates in [0, 1];
    the banded field is the true field when no pre-activation lies in its band."""
    data, p0 = _kinked_problem()

    @jax.jit
    def check(p0, data, gates):
        own = gating_pattern(p0, data.x)
        losses = gated_loss(p0, own, data.x, data.y), gflow.loss(p0, data.x, data.y)
        true = vector_field(0.0, p0, data)
        f = gated_field(0.0, p0, data, gates)
        dq = 2 * (jnp.sum(p0.W * f.W, axis=1) + p0.b * f.b - jnp.sum(p0.V * f.V, axis=1))
        dq = dq / (jnp.sum(p0.W**2, axis=1) * jnp.linalg.norm(f.W, axis=1))
        narrow, inside = GATES.hold(
            0.0, p0, data, true, 1e-6
        )  # tiny sub-step: no sample in the band
        wide, inside_wide = GATES.hold(0.0, p0, data, true, 10.0)
        return (
            own,
            losses,
            (gated_field(0.0, p0, data, own), true),
            dq,
            ramp_gates(p0, data, narrow),
            inside,
            banded_field(0.0, p0, data, narrow),
            inside_wide,
            ramp_gates(p0, data, wide),
        )

    gates = jax.random.uniform(jax.random.key(2), (12, 3), jnp.float64)
    own, losses, fields, dq, ramp, inside, banded, inside_wide, wide = check(p0, data, gates)
    assert float(losses[0]) == pytest.approx(float(losses[1]), rel=1e-14)
    for got, want in zip(*fields):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    assert float(jnp.max(jnp.abs(dq))) < 1e-14
    assert int(inside) == 0
    np.testing.assert_array_equal(ramp, own.astype(ramp.dtype))
    for got, want in zip(banded, fields[1]):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    # A wide band makes the gates of the samples inside it fractional.
    assert int(inside_wide) > 0 and int(jnp.sum((wide > 0) & (wide < 1))) == int(inside_wide)


@pytest.mark.parametrize("stages", [1, 2])
def test_balance_exact_through_gate_crossings_with_large_steps(stages):
    """Q_i is conserved to rounding at h = 1 (h·λ_max(∇²L) > 2: plain GD would be unstable),
    through dozens of gate changes and the loss drop."""
    data, p0, ts = _large_step_problem()
    if stages == 1:  # through the public entry point
        cfg = _gauss1_constant(1.0)
        traj, stats = gflow.gradient_flow(p0, data, ts, config=cfg, return_stats=True)
        obs = traj.observables
        assert obs.loss[-1] < 0.05 < 0.69 < obs.loss[0]
        assert np.sum(obs.cell_hash[1:] != obs.cell_hash[:-1]) >= 10  # gates changed along the way
        assert int(stats.num_steps) == 30 and int(stats.fractional_gates) > 0
        assert int(stats.evaluations) >= 30 and float(stats.stage_residual_max) <= 1.0
        # The stage equations are solved to stage_rtol = 1e-10 (float64 default); the drift is
        # that residual times the relative change per step, far below any explicit solver's
        # O(h^p) drift at h = 1 (~1e-3).
        assert float(np.max(gflow.balance_drift(obs))) <= 1e-10
    else:
        result, dq, _, fractional = _gauss_solve(p0, data, 1.0, 30.0, stages=2)
        assert result == diffrax.RESULTS.successful
        assert int(fractional) > 0
        assert (
            float(dq)
            <= 1e-12 * float(jnp.max(jnp.sum(p0.W**2, axis=1) + jnp.sum(p0.V**2, axis=1))) * 1e3
        )


@pytest.mark.parametrize("stages, order", [(1, 2.0), (2, 4.0)])
def test_convergence_order_on_a_smooth_segment(stages, order):
    """No gate changes on [0, 0.4]: implicit midpoint is order 2, 2-stage Gauss order 4."""
    data, p0 = _kinked_problem()
    reference = ravel_pytree(_tsit5_reference(p0, data, 0.4).final_params)[0]
    hs = np.array([0.2, 0.1, 0.05])
    errors = []
    for h in hs:
        result, _, y, fractional = _gauss_solve(p0, data, float(h), 0.4, stages=stages)
        assert result == diffrax.RESULTS.successful and int(fractional) == 0
        errors.append(float(jnp.max(jnp.abs(y - reference))))
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.25, (slope, errors)


@pytest.mark.parametrize("stages", [1, 2])
def test_agrees_with_tsit5_through_gate_crossings(stages):
    """Through two gate changes on [0, 1] the error against Tsit5 at rtol 1e-12 falls at least
    linearly in h (the kink costs the smooth order, not convergence) and is ~1e-5 at h = 1/160."""
    data, p0 = _kinked_problem()
    end = _tsit5_reference(p0, data, 1.0).final_params
    assert np.any(gating_pattern(p0, data.x) != gating_pattern(end, data.x))
    reference = ravel_pytree(end)[0]
    errors = []
    for n in (20, 160):
        result, _, y, fractional = _gauss_solve(p0, data, 1.0 / n, 1.0, stages=stages)
        assert result == diffrax.RESULTS.successful
        assert int(fractional) > 0  # the crossings were inside steps
        errors.append(float(jnp.max(jnp.abs(y - reference)) / jnp.max(jnp.abs(reference))))
    assert errors[1] < errors[0] / 8 and errors[1] < 2e-5, errors


def test_adaptive_steps_and_unsolved_stages_are_reported():
    data, p0 = _kinked_problem()
    ts = np.linspace(0.0, 1.0, 5)
    traj, stats = gflow.gradient_flow(
        p0, data, ts, config=gflow.FlowConfig(solver="gauss1", rtol=1e-6), return_stats=True
    )
    assert int(traj.status) == OK and int(stats.num_accepted_steps) > 4
    assert float(np.max(gflow.balance_drift(traj.observables))) <= 1e-12
    # One sweep cannot solve the stage equations: a constant-step solve stops and says so.
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        GaussLegendre(max_iterations=1, gated=GATES),
        0.0,
        1.0,
        None,
        p0,
        args=data,
        stepsize_controller=SaveTimeStepSize(dt=0.1, step_ts=jnp.array([0.0, 1.0])),
        throw=False,
    )
    assert sol.result == diffrax.RESULTS.nonlinear_divergence


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(solver="gauss3"), "solver must be one of"),
        (dict(solver="tsit5", stage_rtol=1e-10), "stage_rtol only apply"),
        (
            dict(solver="dopri5", anderson_memory=3, stage_max_iterations=5),
            "stage_max_iterations, anderson_memory",
        ),
        (dict(solver="gauss1", stage_rtol=-1.0), "stage_rtol must be a finite number > 0"),
        (dict(solver="gauss1", stage_atol=float("nan")), "stage_atol must be a finite number > 0"),
        (
            dict(solver="gauss2", stage_max_iterations=0),
            "stage_max_iterations must be an integer >= 1",
        ),
        (dict(solver="gauss2", anderson_memory=-1), "anderson_memory must be an integer >= 0"),
        (dict(solver="gauss2", anderson_memory=2.5), "anderson_memory must be an integer >= 0"),
        (dict(solver="gauss1", adaptive=False), "needs dt0 > 0"),
    ],
)
def test_bad_options_are_rejected_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gflow.FlowConfig(**kwargs)


def test_bad_solver_arguments_are_rejected():
    with pytest.raises(ValueError, match="stages must be one of"):
        GaussLegendre(stages=3)
    with pytest.raises(ValueError, match="max_iterations must be an integer >= 1"):
        GaussLegendre(max_iterations=0)
    with pytest.raises(ValueError, match="dt0=None"):
        diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, a: -y),
            GaussLegendre(),
            0.0,
            1.0,
            0.1,
            jnp.ones(2),
            stepsize_controller=SaveTimeStepSize(dt=0.1, step_ts=jnp.array([0.0, 1.0])),
        )


def _decay(t, y, lam):
    return -lam * y


def test_constant_steps_are_halved_where_the_stage_solve_fails():
    """y' = −λy with plain fixed-point stages (no Anderson): the sweeps contract only when
    h·λ/2 < 1, so steps of 1 at λ = 10 are retried at half length until they do, every accepted
    step is the implicit midpoint step at its own h, and the steps after a retry start again
    from dt. At λ = 10⁴ even dt/64 fails and the solve says so."""

    def solve(lam):  # λ is passed as args: one compilation serves both values
        return diffrax.diffeqsolve(
            diffrax.ODETerm(_decay),
            GaussLegendre(anderson_memory=0, max_iterations=50),
            0.0,
            3.0,
            None,
            jnp.array([1.0]),
            args=jnp.asarray(lam),
            saveat=diffrax.SaveAt(t0=True, steps=True),
            stepsize_controller=SaveTimeStepSize(dt=1.0, step_ts=jnp.array([0.0, 3.0])),
            throw=False,
        )

    sol = solve(10.0)
    assert sol.result == diffrax.RESULTS.successful
    accepted = int(sol.stats["num_accepted_steps"])
    t, y = np.asarray(sol.ts)[: accepted + 1], np.asarray(sol.ys)[: accepted + 1, 0]
    assert t[-1] == pytest.approx(3.0, abs=1e-12)
    h = np.diff(t)
    assert np.all(h * 10.0 / 2 < 1.0) and np.max(h) > 0.1  # retried down to contraction, not below
    assert int(sol.stats["num_rejected_steps"]) >= 3  # 1 → 1/2 → 1/4 → 1/8 on the first step
    np.testing.assert_allclose(y[1:] / y[:-1], (1 - 5.0 * h) / (1 + 5.0 * h), rtol=1e-8)
    assert solve(1e4).result == diffrax.RESULTS.nonlinear_divergence


def test_new_tolerances_and_step_sizes_reuse_the_compiled_solve():
    """rtol, atol and dt0 are traced: a new value reuses the compiled solve and changes the
    result as it should (a tighter rtol moves the solution by about the looser one's error)."""
    from gflow._flow import _solve
    from gflow._sgd import _train

    data, p0 = _kinked_problem()

    def final(**kw):
        return np.asarray(_tsit5_reference(p0, data, 0.8, **kw).final_params.W)

    w_loose = final(rtol=1e-4, atol=1e-6)
    compiled = _solve._cache_size()
    w_tight = final(rtol=1e-9, atol=1e-11)
    w_ref = final(rtol=1e-11, atol=1e-13)
    assert _solve._cache_size() == compiled
    err_loose, err_tight = np.abs(w_loose - w_ref).max(), np.abs(w_tight - w_ref).max()
    assert err_tight < 1e-3 * err_loose  # the new tolerance was used, not the compiled one

    # Constant implicit-midpoint steps on the large-step problem: dt0 = 1 and dt0 = 1/2.
    big_data, big_p0, big_ts = _large_step_problem()

    def gauss1_final(dt0):
        traj = gflow.gradient_flow(big_p0, big_data, big_ts, config=_gauss1_constant(dt0))
        assert isinstance(traj, gflow.Trajectory)
        return np.asarray(traj.final_params.W)

    w_unit = gauss1_final(1.0)
    compiled = _solve._cache_size()
    w_half = gauss1_final(0.5)
    assert _solve._cache_size() == compiled
    assert not np.array_equal(w_unit, w_half)

    cfg = gflow.SGDConfig(steps=20, record_every=10)
    key = jax.random.key(0)
    w_gd = [
        np.asarray(gflow.train_gd(p0, data, learning_rate=lr, config=cfg).final_params.W)
        for lr in (0.01, 0.02)
    ]
    compiled = _train._cache_size()
    gflow.train_sgd(p0, key, data, learning_rate=0.03, config=cfg)  # new lr, same config
    gflow.train_gd(p0, data, learning_rate=0.04, config=cfg)
    assert _train._cache_size() == compiled
    assert not np.array_equal(w_gd[0], w_gd[1])

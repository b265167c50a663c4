"""Balance projection of explicit solvers (`gflow.solvers`): the rescaling keeps the network
function and sets the balance; projected Euler's step is GD's step rescaled; projected Heun
conserves Q to rounding through gate crossings and keeps order 2 on a smooth segment; a constant
step too large for the flow is the status LOSS_ROSE.

The projected-Heun tests share one problem size (24 samples in 6 dims, 5 neurons) and one save
grid of 7 times, so that the projected Heun solve compiles once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import gflow
from gflow.network import balance, logits
from gflow.solvers import balance_defect, rescale_to_balance


def _problem(width=5, dim=6, sigma=0.3, seed=0, key=None):
    """24 samples from data seed ``seed``; init from key ``key`` (default: ``seed``)."""
    data = gflow.training_data(
        gflow.gaussian_clusters(n_samples=24, dim=dim, seed=seed, test_samples=0), jnp.float64
    )
    key = jax.random.key(seed if key is None else key)
    return data, gflow.init_params(key, width, dim, sigma, dtype=jnp.float64)


@jax.jit
def _rescaled(p, target, x):
    """`rescale_to_balance` and what the test reads of it, as one compiled program."""
    r = rescale_to_balance(p, target)
    cos_w = jnp.sum(r.W * p.W, axis=1) / (
        jnp.linalg.norm(r.W, axis=1) * jnp.linalg.norm(p.W, axis=1)
    )
    return r, balance(r), logits(r, x), logits(p, x), cos_w


def test_rescaling_sets_the_balance_and_keeps_the_network_function():
    data, p = _problem()
    p = p._replace(b=0.1 * jax.random.normal(jax.random.key(5), p.b.shape, jnp.float64))
    q_now = balance(p)
    for target in (q_now, q_now + 0.05, q_now - 0.05, -q_now, jnp.zeros_like(q_now)):
        _, q, out, out_before, cos_w = _rescaled(p, target, data.x)
        np.testing.assert_allclose(q, target, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(out, out_before, rtol=1e-12, atol=1e-14)
        # Each neuron moved along its own orbit: w_i and v_i keep their directions.
        np.testing.assert_allclose(cos_w, 1.0, rtol=1e-13)
    same = _rescaled(p, q_now, data.x)[0]
    np.testing.assert_allclose(ravel_pytree(same)[0], ravel_pytree(p)[0], rtol=1e-13, atol=1e-16)


@jax.jit
def _gd_step_rescaled(p0, x, y, h):
    """One GD step of size h, the same step rescaled back to the balance of p0, and the step's
    balance defect."""
    grad = jax.grad(gflow.loss)(p0, x, y)
    gd = jax.tree.map(lambda a, g: a - h * g, p0, grad)
    return rescale_to_balance(gd, balance(p0)), balance_defect(p0, gd)


def test_projected_euler_step_is_the_gd_step_rescaled():
    data, p0 = _problem()
    h = 0.1
    cfg = gflow.FlowConfig(solver="euler", adaptive=False, dt0=h, project_balance=True)
    traj, stats = gflow.gradient_flow(p0, data, np.array([0.0, h]), config=cfg, return_stats=True)
    want, defect = _gd_step_rescaled(p0, data.x, data.y, h)
    got = jax.tree.map(lambda a: a[-1], traj.snapshots)
    np.testing.assert_allclose(ravel_pytree(got)[0], ravel_pytree(want)[0], rtol=1e-12, atol=1e-15)
    assert int(stats.num_steps) == 1 and int(stats.evaluations) == 1
    assert float(stats.balance_defect_max) == pytest.approx(float(defect), rel=1e-10)
    assert float(stats.balance_defect_max) > 0


def test_projected_heun_conserves_the_balance_through_gate_crossings():
    """h = 0.5 through the loss drop: plain Heun's balance drifts by O(h²) per step, the projected
    one only by rounding; the saved states are step end points (steps land on the save times)."""
    data, p0 = _problem(sigma=0.1)
    ts = np.linspace(0.0, 30.0, 7)  # save interval 5: 10 steps each
    plain = gflow.gradient_flow(
        p0, data, ts, config=gflow.FlowConfig(solver="heun", adaptive=False, dt0=0.5)
    )
    cfg = gflow.FlowConfig(solver="heun", adaptive=False, dt0=0.5, project_balance=True)
    traj, stats = gflow.gradient_flow(p0, data, ts, config=cfg, return_stats=True)
    obs = traj.observables
    assert obs.loss[-1] < 0.2 < 0.69 < obs.loss[0]
    assert np.sum(obs.cell_hash[1:] != obs.cell_hash[:-1]) >= 3  # gates changed along the way
    assert int(stats.num_steps) == 60 and int(stats.evaluations) == 120
    drift_plain = float(np.max(gflow.balance_drift(plain.observables)))
    drift = float(np.max(gflow.balance_drift(obs)))
    assert drift < 1e-13 < 1e-4 < drift_plain, (drift, drift_plain)
    assert 1e-8 < float(stats.balance_defect_max) < 1e-1
    # Same trajectory up to the explicit step's own error.
    np.testing.assert_allclose(obs.loss, plain.observables.loss, rtol=0.05)


def test_a_constant_step_that_raises_the_loss_is_a_status():
    """Projected Heun at h = 5 (one step per save interval) on the problem above: the loss rises
    between t = 10 and 15 (0.61 to 0.67; the flow falls to 0.15 there), which the flow never
    does: the status LOSS_ROSE, not ok, and a `TrajectoryError` when thrown."""
    data, p0 = _problem(sigma=0.1)
    ts = np.linspace(0.0, 30.0, 7)
    cfg = gflow.FlowConfig(solver="heun", adaptive=False, dt0=5.0, project_balance=True)
    traj = gflow.gradient_flow(p0, data, ts, config=cfg, throw=False)
    loss = np.asarray(traj.observables.loss)
    assert int(traj.status) == gflow.solvers.LOSS_ROSE
    assert np.max(np.diff(loss) / loss[:-1]) > 0.05 and np.all(np.isfinite(loss))
    with pytest.raises(gflow.TrajectoryError, match="loss rose between save times"):
        gflow.gradient_flow(p0, data, ts, config=cfg)


def test_projected_heun_keeps_order_two_on_a_smooth_segment():
    """σ = 1, data seed 2, init key 3: no gate changes on [0, 0.6] (the gating pattern is
    checked at the reference's 7 save times); the error against Tsit5 at rtol 1e-12 falls as
    h²."""
    data, p0 = _problem(sigma=1.0, seed=2, key=3)
    ts = np.linspace(0.0, 0.6, 7)  # save interval 0.1: every h below lands on the save times
    tight = gflow.FlowConfig(solver="tsit5", rtol=1e-12, atol=1e-13)
    reference = gflow.gradient_flow(p0, data, ts, config=tight)
    assert isinstance(reference, gflow.Trajectory)
    end = jax.tree.map(lambda a: a[-1], reference.snapshots)
    np.testing.assert_array_equal(
        gflow.gating_pattern(end, data.x), gflow.gating_pattern(p0, data.x)
    )
    hashes = np.asarray(reference.observables.cell_hash)
    np.testing.assert_array_equal(hashes, np.broadcast_to(hashes[0], hashes.shape))
    ref = ravel_pytree(end)[0]
    hs = np.array([0.1, 0.05, 0.025])
    errors = []
    for h in hs:
        cfg = gflow.FlowConfig(solver="heun", adaptive=False, dt0=float(h), project_balance=True)
        got = ravel_pytree(
            jax.tree.map(lambda a: a[-1], gflow.gradient_flow(p0, data, ts, config=cfg).snapshots)
        )[0]
        errors.append(float(jnp.max(jnp.abs(got - ref))))
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    assert abs(slope - 2.0) < 0.25, (slope, errors)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(solver="tsit5", adaptive=False, dt0=0.1),  # FSAL
        dict(solver="heun", dt0=0.1),  # adaptive steps
        dict(solver="gauss1", adaptive=False, dt0=0.1),  # conserves the balance already
    ],
)
def test_projection_options_are_checked(kwargs):
    with pytest.raises(ValueError, match="project_balance needs constant steps"):
        gflow.FlowConfig(project_balance=True, **kwargs)

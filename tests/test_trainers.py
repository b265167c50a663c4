"""Gradient flow (diffrax) and GD/SGD (optax) against each other and against the invariants."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow._flow import _solve
from gflow._sgd import _train
from gflow.solvers import MAX_STEPS_REACHED, NON_FINITE, OK
from gflow.theory import loss_drop_time


def _data(n=24, dim=6, seed=0, dtype=jnp.float64):
    ds = gflow.gaussian_clusters(n_samples=n, dim=dim, seed=seed)
    return gflow.training_data(ds, dtype)


def _final(traj):
    return jax.flatten_util.ravel_pytree(traj.final_params)[0]


@pytest.mark.slow
def test_balance_conserved_through_loss_drop_float64():
    """Q_i = ‖w_i‖² + b_i² − ‖v_i‖² is exact under the flow (docs/theory.md §2): drift <= 1e-8."""
    data = _data()
    p0 = gflow.init_params(jax.random.key(0), 4, 6, 1e-4, dtype=jnp.float64)
    ts = np.linspace(0.0, 40.0, 81)
    traj = gflow.gradient_flow(p0, data, ts, config=gflow.FlowConfig(rtol=1e-7, max_steps=400_000))
    obs = traj.observables
    # The run goes through the loss drop: loss falls from log 2 to well below it.
    assert obs.loss[0] == pytest.approx(np.log(2), abs=1e-6)
    assert obs.loss[-1] < 0.25
    assert 0 < loss_drop_time(traj.t, obs.loss) < ts[-1]
    # Norms grew by orders of magnitude, so the check is not trivial.
    assert np.max(obs.P[-1]) / np.max(obs.P[0]) > 1e6
    drift = np.asarray(gflow.balance_drift(obs))
    assert np.max(drift) <= 1e-8, drift


def _flow_at(p0, data, t_end, rtol=1e-10):
    ts = np.linspace(0.0, t_end, 11)
    cfg = gflow.FlowConfig(rtol=rtol, atol=1e-12, max_steps=400_000)
    return gflow.gradient_flow(p0, data, ts, config=cfg)


def _kinked_problem():
    """A small problem whose flow on [0, 1] crosses ReLU kinks without sliding along them."""
    data = _data(n=12, dim=4, seed=1)
    p0 = gflow.init_params(jax.random.key(1), 3, 4, 1.0, dtype=jnp.float64)
    return data, p0, 1.0


def test_gradient_descent_converges_to_flow_with_order_one():
    """GD is the Euler scheme of the flow: the error at fixed t is O(η) (docs/theory.md §1)."""
    data, p0, t_end = _kinked_problem()
    flow = _flow_at(p0, data, t_end)
    # The interval contains gate changes, so the order is checked across kinks.
    assert np.any(flow.observables.cell_hash[0] != flow.observables.cell_hash[-1])
    reference = _final(flow)
    etas = np.array([0.02, 0.01, 0.005, 0.0025])
    errors = []
    for eta in etas:
        steps = int(round(t_end / eta))
        traj = gflow.train_gd(
            p0, data, learning_rate=eta, config=gflow.SGDConfig(steps=steps, record_every=steps)
        )
        np.testing.assert_allclose(traj.t[-1], t_end, rtol=1e-12)
        errors.append(float(jnp.max(jnp.abs(_final(traj) - reference))))
    order = np.polyfit(np.log(etas), np.log(errors), 1)[0]
    assert abs(order - 1.0) <= 0.2, (order, errors)


def test_momentum_gd_follows_flow_at_rescaled_time():
    """With momentum β, k steps of size η cover flow time k·η/(1−β): error shrinks with η."""
    data, p0, t_end = _kinked_problem()
    beta = 0.9
    reference = _final(_flow_at(p0, data, t_end))
    errors = []
    for eta in (0.002, 0.0005):
        steps = int(round(t_end * (1 - beta) / eta))
        traj = gflow.train_gd(
            p0,
            data,
            learning_rate=eta,
            momentum=beta,
            config=gflow.SGDConfig(steps=steps, record_every=steps),
        )
        np.testing.assert_allclose(traj.t[-1], t_end, rtol=1e-9)
        errors.append(float(jnp.max(jnp.abs(_final(traj) - reference))))
    assert errors[1] < 0.5 * errors[0], errors
    scale = float(jnp.max(jnp.abs(reference)))
    assert errors[1] < 0.05 * scale


def test_sgd_full_batch_without_momentum_equals_gd():
    data = _data(n=24, dim=6)
    p0 = gflow.init_params(jax.random.key(2), 6, 6, 0.1, dtype=jnp.float64)
    cfg = gflow.SGDConfig(steps=200, record_every=20, batch_size=24)
    sgd = gflow.train_sgd(p0, jax.random.key(9), data, learning_rate=0.05, momentum=0.0, config=cfg)
    gd = gflow.train_gd(p0, data, learning_rate=0.05, config=cfg)
    # Same gradients up to the summation order of the shuffled full batch.
    np.testing.assert_allclose(_final(sgd), _final(gd), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(sgd.observables.loss, gd.observables.loss, rtol=1e-10)
    np.testing.assert_array_equal(sgd.t, gd.t)


def test_sgd_minibatches_cover_each_epoch_once():
    """Each epoch visits every sample exactly once (N divisible by B)."""
    from gflow._sgd import _batch_indices

    key = jax.random.key(5)
    n, b = 12, 4
    for epoch in range(3):
        idx = np.concatenate(
            [np.asarray(_batch_indices(key, jnp.asarray(epoch * 3 + j), n, b)) for j in range(3)]
        )
        np.testing.assert_array_equal(np.sort(idx), np.arange(n))


def test_flow_time_of_sgd_records():
    data = _data()
    p0 = gflow.init_params(jax.random.key(0), 4, 6, 1e-3, dtype=jnp.float64)
    cfg = gflow.SGDConfig(steps=60, record_every=10, batch_size=4, snapshot_every=2)
    traj = gflow.train_sgd(
        p0, jax.random.key(1), data, learning_rate=0.01, momentum=0.9, config=cfg
    )
    np.testing.assert_allclose(traj.t, np.arange(7) * 10 * 0.01 / 0.1, rtol=1e-12)
    np.testing.assert_allclose(traj.snapshot_t, np.asarray(traj.t)[[0, 2, 4, 6]], rtol=1e-12)
    # Snapshots are the parameters whose observables were recorded at the same time.
    for k, rec in enumerate([0, 2, 4, 6]):
        snap = jax.tree.map(lambda a: a[k], traj.snapshots)
        np.testing.assert_allclose(gflow.observe(snap, data).P, traj.observables.P[rec], rtol=1e-12)
    np.testing.assert_array_equal(traj.snapshots.W[0], p0.W)


def test_vmap_over_seeds_equals_python_loop():
    data = _data()
    keys = jax.random.split(jax.random.key(7), 4)
    cfg = gflow.SGDConfig(steps=40, record_every=10, batch_size=4)

    def one(k):
        ki, ks = jax.random.split(k)
        p0 = gflow.init_params(ki, 5, 6, 1e-2, dtype=jnp.float64)
        return gflow.train_sgd(
            p0, ks, data, learning_rate=0.05, momentum=0.9, config=cfg, throw=False
        )

    batched = jax.vmap(one)(keys)
    for s, k in enumerate(keys):
        single = one(k)
        np.testing.assert_allclose(
            batched.observables.P[s], single.observables.P, rtol=1e-12, atol=1e-300
        )
        np.testing.assert_allclose(batched.snapshots.W[s], single.snapshots.W, rtol=1e-12)

    def one_flow(k):
        p0 = gflow.init_params(k, 3, 6, 1e-2, dtype=jnp.float64)
        return gflow.gradient_flow(p0, data, jnp.linspace(0.0, 2.0, 5), throw=False)

    flows = jax.vmap(one_flow)(keys[:2])
    for s in range(2):
        np.testing.assert_allclose(
            flows.observables.P[s], one_flow(keys[s]).observables.P, rtol=1e-9
        )
    np.testing.assert_array_equal(flows.status, [OK, OK])


def test_new_values_do_not_retrace():
    data = _data()
    cfg = gflow.SGDConfig(steps=20, record_every=10, batch_size=4)
    p0 = gflow.init_params(jax.random.key(0), 4, 6, 1e-3, dtype=jnp.float64)
    gflow.train_sgd(p0, jax.random.key(0), data, learning_rate=0.01, momentum=0.9, config=cfg)
    before = _train._cache_size()
    p1 = gflow.init_params(jax.random.key(1), 4, 6, 2e-3, dtype=jnp.float64)
    gflow.train_sgd(p1, jax.random.key(3), data, learning_rate=0.02, momentum=0.5, config=cfg)
    assert _train._cache_size() == before

    ts = np.linspace(0.0, 1.0, 5)
    gflow.gradient_flow(p0, data, ts)
    before = _solve._cache_size()
    gflow.gradient_flow(p1, data, ts * 2.0)
    assert _solve._cache_size() == before


def test_max_steps_exhaustion_is_reported_not_truncated():
    data = _data()
    p0 = gflow.init_params(jax.random.key(0), 4, 6, 1e-2, dtype=jnp.float64)
    cfg = gflow.FlowConfig(max_steps=5)
    with pytest.raises(gflow.TrajectoryError, match="max_steps"):
        gflow.gradient_flow(p0, data, np.linspace(0.0, 50.0, 11), config=cfg)
    traj = gflow.gradient_flow(p0, data, np.linspace(0.0, 50.0, 11), config=cfg, throw=False)
    assert int(traj.status) == MAX_STEPS_REACHED
    assert "max_steps" in gflow.status_message(traj.status)


def test_divergence_is_a_status():
    data = _data()
    p0 = gflow.init_params(jax.random.key(0), 4, 6, 1.0, dtype=jnp.float64)
    cfg = gflow.SGDConfig(steps=50, record_every=10)
    traj = gflow.train_gd(p0, data, learning_rate=1e200, config=cfg, throw=False)
    assert int(traj.status) == NON_FINITE
    with pytest.raises(gflow.TrajectoryError, match="NaN or inf"):
        gflow.train_gd(p0, data, learning_rate=1e200, config=cfg)
    fine = gflow.train_gd(p0, data, learning_rate=1e-2, config=cfg)
    assert int(fine.status) == OK


def test_float32_and_float64_trajectories_agree():
    ds = gflow.gaussian_clusters(n_samples=24, dim=6, seed=0)
    p64 = gflow.init_params(jax.random.key(0), 4, 6, 1e-2, dtype=jnp.float64)
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), p64)
    ts = np.linspace(0.0, 5.0, 6)
    a = gflow.gradient_flow(
        p64, gflow.training_data(ds, jnp.float64), ts, config=gflow.FlowConfig(rtol=1e-8)
    )
    b = gflow.gradient_flow(
        p32, gflow.training_data(ds, jnp.float32), ts, config=gflow.FlowConfig(rtol=1e-5)
    )
    assert b.observables.P.dtype == jnp.float32
    np.testing.assert_allclose(b.observables.P, a.observables.P, rtol=1e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ts=[0.0, 1.0, 0.5]), "strictly increasing"),
        (dict(ts=[1.0]), "at least 2 times"),
        (dict(ts=[-1.0, 1.0]), "t >= 0"),
        (dict(config=dict(solver="rk99")), "solver must be one of"),
        (dict(config=dict(rtol=0.0)), "rtol and atol must be > 0"),
        (dict(config=dict(max_steps=0)), "max_steps must be a positive integer"),
        (dict(config=dict(solver="euler")), "needs dt0"),
    ],
)
def test_flow_rejects_bad_configuration(kwargs, match):
    data = _data()
    p0 = gflow.init_params(jax.random.key(0), 4, 6, 1e-2, dtype=jnp.float64)
    with pytest.raises(ValueError, match=match):
        cfg = gflow.FlowConfig(**kwargs.get("config", {}))
        gflow.gradient_flow(p0, data, kwargs.get("ts", [0.0, 1.0]), config=cfg)


@pytest.mark.parametrize(
    "cfg, hyper, match",
    [
        (dict(steps=0), {}, "steps must be a positive integer"),
        (dict(steps=10, record_every=3), {}, "multiple of record_every"),
        (dict(steps=10, batch_size=0), {}, "batch_size must be a positive integer"),
        (dict(steps=10, batch_size=100), {}, "must not exceed the number of samples"),
        (dict(steps=10), dict(learning_rate=0.0), "learning_rate must be > 0"),
        (dict(steps=10), dict(learning_rate=float("nan")), "learning_rate must be finite"),
        (dict(steps=10), dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
    ],
)
def test_sgd_rejects_bad_configuration(cfg, hyper, match):
    data = _data()
    p0 = gflow.init_params(jax.random.key(0), 4, 6, 1e-2, dtype=jnp.float64)
    with pytest.raises(ValueError, match=match):
        config = gflow.SGDConfig(**cfg)
        gflow.train_sgd(
            p0,
            jax.random.key(0),
            data,
            config=config,
            **{"learning_rate": 0.1, "momentum": 0.0, **hyper},
        )


def test_float64_needs_x64_flag_message():
    ds = gflow.gaussian_clusters(n_samples=8, dim=4, seed=0)
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match="float64 needs 64-bit JAX"):
            gflow.training_data(ds, jnp.float64)
    finally:
        jax.config.update("jax_enable_x64", True)

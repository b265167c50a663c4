"""Gradient flow (diffrax) and GD/SGD (optax) against each other and against the invariants.

The tests share one problem size (`_data()`: 24 samples in 6 dimensions; 4 neurons) and a few
static configurations, so that a few compiled programs serve the whole file: flows save at
`N_SAVES` times under `_flow_config` (float64) or `_float32_config`; GD is one run of `GD_CFG`,
read at the record of the wanted flow time; mini-batch SGD uses `SGD_CFG`."""

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

N_SAVES = 81
# Full-batch GD: 400 steps, a record every 50, every record kept.
GD_CFG = gflow.SGDConfig(steps=400, record_every=50, snapshot_every=1)
# Mini-batch SGD on `_data()`.
SGD_CFG = gflow.SGDConfig(steps=60, record_every=10, batch_size=4, snapshot_every=2)


def _data(n=24, dim=6, seed=0, dtype=jnp.float64):
    ds = gflow.gaussian_clusters(n_samples=n, dim=dim, seed=seed)
    return gflow.training_data(ds, dtype)


def _flow_config(rtol=1e-6):
    """Tsit5 in float64: rtol is traced, max_steps fits the loss-drop run."""
    return gflow.FlowConfig(rtol=rtol, max_steps=400_000)


def _float32_config(rtol=1e-5):
    """Tsit5 in float32: 76 steps reach t = 5 from σ = 1e-2; t = 50 needs 1260."""
    return gflow.FlowConfig(rtol=rtol, max_steps=256)


def _final(traj):
    return jax.flatten_util.ravel_pytree(traj.final_params)[0]


@pytest.mark.slow
def test_balance_conserved_through_loss_drop_float64():
    """Q_i = ‖w_i‖² + b_i² − ‖v_i‖² is exact under the flow (docs/theory.md §2): Tsit5's drift
    through the loss drop is within a tenth of its rtol, and falls with it at first order (the
    drift is the solver's error, not a motion of Q)."""
    data = _data()
    p0 = gflow.init_params(jax.random.key(0), 4, 6, 1e-4, dtype=jnp.float64)
    ts = np.linspace(0.0, 40.0, N_SAVES)
    drifts = {}
    for rtol in (1e-5, 1e-6):
        obs = gflow.gradient_flow(p0, data, ts, config=_flow_config(rtol=rtol)).observables
        # The run goes through the loss drop: loss falls from log 2 to well below it.
        assert obs.loss[0] == pytest.approx(np.log(2), abs=1e-6)
        assert obs.loss[-1] < 0.25
        assert 0 < loss_drop_time(ts, obs.loss) < ts[-1]
        # Norms grew by orders of magnitude, so the check is not trivial.
        assert np.max(obs.P[-1]) / np.max(obs.P[0]) > 1e6
        drifts[rtol] = float(np.max(np.asarray(gflow.balance_drift(obs))))
    assert drifts[1e-6] <= 1e-7, drifts
    assert 5.0 < drifts[1e-5] / drifts[1e-6] < 20.0, drifts


def _flow_at(p0, data, t_end, rtol=1e-10):
    ts = np.linspace(0.0, t_end, N_SAVES)
    return gflow.gradient_flow(p0, data, ts, config=_flow_config(rtol))


def _kinked_problem():
    """A problem whose flow on [0, 1] crosses ReLU kinks (the gates change in 11 of the 80 save
    intervals) without sliding along them: 4 neurons at σ = 1 (init key 2) on `_data()`."""
    data = _data()
    p0 = gflow.init_params(jax.random.key(2), 4, 6, 1.0, dtype=jnp.float64)
    return data, p0, 1.0


def _gd_at(p0, data, t_end, eta, momentum=0.0):
    """GD (with momentum β) after the k = t_end·(1−β)/η steps that cover flow time t_end: the
    snapshot at record k / 50 of one `GD_CFG` run. Returns that record's time and parameters."""
    steps = int(round(t_end * (1 - momentum) / eta))
    assert steps % GD_CFG.record_every == 0 and steps <= GD_CFG.steps
    rec = steps // GD_CFG.record_every
    traj = gflow.train_gd(p0, data, learning_rate=float(eta), momentum=momentum, config=GD_CFG)
    np.testing.assert_array_equal(traj.snapshot_t[rec], traj.t[rec])  # all records are kept
    params = jax.tree.map(lambda a: a[rec], traj.snapshots)
    return traj.t[rec], jax.flatten_util.ravel_pytree(params)[0]


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
        t, params = _gd_at(p0, data, t_end, eta)
        np.testing.assert_allclose(t, t_end, rtol=1e-12)
        errors.append(float(jnp.max(jnp.abs(params - reference))))
    order = np.polyfit(np.log(etas), np.log(errors), 1)[0]
    assert abs(order - 1.0) <= 0.2, (order, errors)


def test_momentum_gd_follows_flow_at_rescaled_time():
    """With momentum β, k steps of size η cover flow time k·η/(1−β): error shrinks with η."""
    data, p0, t_end = _kinked_problem()
    beta = 0.9
    reference = _final(_flow_at(p0, data, t_end))
    errors = []
    for eta in (0.002, 0.0005):
        t, params = _gd_at(p0, data, t_end, eta, momentum=beta)
        np.testing.assert_allclose(t, t_end, rtol=1e-9)
        errors.append(float(jnp.max(jnp.abs(params - reference))))
    assert errors[1] < 0.5 * errors[0], errors
    scale = float(jnp.max(jnp.abs(reference)))
    assert errors[1] < 0.05 * scale


def test_sgd_full_batch_without_momentum_equals_gd():
    """SGD with B = N = 24 (a shuffled full batch each epoch) against GD, 400 steps."""
    data = _data()
    p0 = gflow.init_params(jax.random.key(2), 4, 6, 0.1, dtype=jnp.float64)
    cfg = gflow.SGDConfig(steps=400, record_every=50, batch_size=24, snapshot_every=1)
    sgd = gflow.train_sgd(p0, jax.random.key(9), data, learning_rate=0.05, momentum=0.0, config=cfg)
    gd = gflow.train_gd(p0, data, learning_rate=0.05, config=GD_CFG)
    # Same gradients up to the summation order of the shuffled full batch.
    np.testing.assert_allclose(_final(sgd), _final(gd), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(sgd.observables.loss, gd.observables.loss, rtol=1e-10)
    np.testing.assert_array_equal(sgd.t, gd.t)
    # The run moved: equality of two frozen trajectories would prove nothing.
    assert float(gd.observables.loss[-1]) < 0.9 * float(gd.observables.loss[0])


def test_sgd_minibatches_cover_each_epoch_once():
    """Each epoch visits every sample exactly once (N divisible by B)."""
    from gflow._sgd import _batch_indices

    key = jax.random.key(5)
    n, b = 12, 4
    batch_indices = jax.jit(_batch_indices, static_argnums=(2, 3))  # as in the training loop
    for epoch in range(3):
        idx = np.concatenate(
            [np.asarray(batch_indices(key, jnp.asarray(epoch * 3 + j), n, b)) for j in range(3)]
        )
        np.testing.assert_array_equal(np.sort(idx), np.arange(n))


def test_flow_time_of_sgd_records():
    data = _data()
    p0 = gflow.init_params(jax.random.key(0), 4, 6, 1e-3, dtype=jnp.float64)
    cfg = SGD_CFG  # 60 steps, a record every 10, a snapshot every 2 records
    traj = gflow.train_sgd(
        p0, jax.random.key(1), data, learning_rate=0.01, momentum=0.9, config=cfg
    )
    np.testing.assert_allclose(traj.t, np.arange(7) * 10 * 0.01 / 0.1, rtol=1e-12)
    np.testing.assert_allclose(traj.snapshot_t, np.asarray(traj.t)[[0, 2, 4, 6]], rtol=1e-12)
    # Snapshots are the parameters whose observables were recorded at the same time.
    observe = jax.jit(gflow.observe)
    for k, rec in enumerate([0, 2, 4, 6]):
        snap = jax.tree.map(lambda a: a[k], traj.snapshots)
        np.testing.assert_allclose(observe(snap, data).P, traj.observables.P[rec], rtol=1e-12)
    np.testing.assert_array_equal(traj.snapshots.W[0], p0.W)


def test_vmap_over_seeds_equals_python_loop():
    data = _data()
    keys = jax.random.split(jax.random.key(7), 4)

    def one(k):
        ki, ks = jax.random.split(k)
        p0 = gflow.init_params(ki, 4, 6, 1e-2, dtype=jnp.float64)
        return gflow.train_sgd(
            p0, ks, data, learning_rate=0.05, momentum=0.9, config=SGD_CFG, throw=False
        )

    batched = jax.vmap(one)(keys)
    for s, k in enumerate(keys):
        single = one(k)
        np.testing.assert_allclose(
            batched.observables.P[s], single.observables.P, rtol=1e-12, atol=1e-300
        )
        np.testing.assert_allclose(batched.snapshots.W[s], single.snapshots.W, rtol=1e-12)

    def one_flow(k):
        p0 = gflow.init_params(k, 4, 6, 1e-2, dtype=jnp.float64)
        ts = jnp.linspace(0.0, 2.0, N_SAVES)
        return gflow.gradient_flow(p0, data, ts, config=_flow_config(), throw=False)

    flows = jax.vmap(one_flow)(keys)
    for s, k in enumerate(keys):
        np.testing.assert_allclose(flows.observables.P[s], one_flow(k).observables.P, rtol=1e-9)
    np.testing.assert_array_equal(flows.status, [OK] * 4)


def test_new_values_do_not_retrace():
    data = _data()
    cfg = SGD_CFG
    p0 = gflow.init_params(jax.random.key(0), 4, 6, 1e-3, dtype=jnp.float64)
    gflow.train_sgd(p0, jax.random.key(0), data, learning_rate=0.01, momentum=0.9, config=cfg)
    before = _train._cache_size()
    p1 = gflow.init_params(jax.random.key(1), 4, 6, 2e-3, dtype=jnp.float64)
    gflow.train_sgd(p1, jax.random.key(3), data, learning_rate=0.02, momentum=0.5, config=cfg)
    assert _train._cache_size() == before

    ts = np.linspace(0.0, 1.0, N_SAVES)
    gflow.gradient_flow(p0, data, ts, config=_flow_config())
    before = _solve._cache_size()
    gflow.gradient_flow(p1, data, ts * 2.0, config=_flow_config())
    assert _solve._cache_size() == before


def test_max_steps_exhaustion_is_reported_not_truncated():
    """In float32, [0, 50] needs 1260 steps: more than the 256 of `_float32_config`."""
    data = _data(dtype=jnp.float32)
    p64 = gflow.init_params(jax.random.key(0), 4, 6, 1e-2, dtype=jnp.float64)
    p0 = jax.tree.map(lambda a: a.astype(jnp.float32), p64)
    ts = np.linspace(0.0, 50.0, N_SAVES)
    cfg = _float32_config()
    with pytest.raises(gflow.TrajectoryError, match="max_steps"):
        gflow.gradient_flow(p0, data, ts, config=cfg)
    traj = gflow.gradient_flow(p0, data, ts, config=cfg, throw=False)
    assert isinstance(traj, gflow.Trajectory)
    assert int(traj.status) == MAX_STEPS_REACHED
    assert int(traj.num_steps) == cfg.max_steps
    assert "max_steps" in gflow.status_message(traj.status)


def test_divergence_is_a_status():
    data = _data()
    p0 = gflow.init_params(jax.random.key(0), 4, 6, 1.0, dtype=jnp.float64)
    traj = gflow.train_gd(p0, data, learning_rate=1e200, config=GD_CFG, throw=False)
    assert int(traj.status) == NON_FINITE
    with pytest.raises(gflow.TrajectoryError, match="NaN or inf"):
        gflow.train_gd(p0, data, learning_rate=1e200, config=GD_CFG)
    fine = gflow.train_gd(p0, data, learning_rate=1e-2, config=GD_CFG)
    assert int(fine.status) == OK


def test_float32_and_float64_trajectories_agree():
    ds = gflow.gaussian_clusters(n_samples=24, dim=6, seed=0)
    p64 = gflow.init_params(jax.random.key(0), 4, 6, 1e-2, dtype=jnp.float64)
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), p64)
    ts = np.linspace(0.0, 5.0, N_SAVES)
    a = gflow.gradient_flow(
        p64, gflow.training_data(ds, jnp.float64), ts, config=_flow_config(rtol=1e-8)
    )
    b = gflow.gradient_flow(
        p32, gflow.training_data(ds, jnp.float32), ts, config=_float32_config(rtol=1e-5)
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

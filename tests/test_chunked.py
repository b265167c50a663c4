"""The chunked momentum-SGD kernel against the per-step optax trainer it reformulates.

Every float64 test runs `CFG` in chunks of `CHUNK` = 6 steps (the two-level sum in blocks of 2
steps), every float32 test `LONG_CFG` in chunks of `LONG_CHUNK` = 3 (blocks of 1 step), so that
each kernel variant compiles once for the file."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gflow import SGDConfig, init_params, load_dataset, train_sgd, training_data
from gflow._chunked import _train_one, _train_per_seed, _train_stacked
from gflow._sgd import _batch_indices
from gflow.solvers import NON_FINITE, OK
from gflow.trainers import (
    NeuronNorms,
    chunk_batch_indices,
    chunk_coefficients,
    epoch_permutations,
    resolve_basis,
    train_sgd_chunked,
    train_sgd_chunked_seeds,
    train_sgd_seeds_shared_order,
)

N, D, WIDTH = 30, 12, 8
# One float64 configuration and chunk, so that the tests share compilations. B = 4: 7 steps per
# epoch (2 samples skipped), so chunk boundaries (every 6 steps) and epoch boundaries never line
# up in the 36 steps: the first chunk lies within an epoch, each later one spans two.
CFG = SGDConfig(steps=36, record_every=12, batch_size=4, snapshot_every=1)
CHUNK = 6
# The float32 runs: 150 steps of B = 4, about 21 epochs, in 50 chunks of 3 steps.
LONG_CFG = SGDConfig(steps=150, record_every=30, batch_size=4, snapshot_every=1)
LONG_CHUNK = 3


@pytest.fixture(scope="module")
def dataset():
    return load_dataset("clusters", n_samples=N, dim=D, seed=0, test_samples=0)


@pytest.fixture(scope="module")
def data64(dataset):
    return training_data(dataset, jnp.float64)


def _params(seed, sigma=0.3):
    return init_params(jax.random.key(seed), WIDTH, D, sigma, dtype=jnp.float64)


def _stack(params_list):
    return jax.tree.map(lambda *p: jnp.stack(p), *params_list)


def _max_relative_error(a, b):
    errors = []
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        errors.append(np.max(np.abs(x - y)) / max(np.max(np.abs(x)), 1e-300))
    return max(errors)


def test_coefficients_match_closed_forms():
    """a_k = β(1−β^k)/(1−β), c_kj = (1−β^{k−j})/(1−β) (j<k), β^{K−1−j}, β^K."""
    beta, k_steps = 0.9, 7
    coefficients = jax.jit(chunk_coefficients, static_argnums=(1, 2))  # as in the kernel
    co = coefficients(beta, k_steps, jnp.float64)
    k = np.arange(k_steps)
    np.testing.assert_allclose(co.a, beta * (1 - beta**k) / (1 - beta), rtol=1e-14, atol=1e-15)
    lag = k[:, None] - k[None, :]
    expected_c = np.where(lag > 0, (1 - beta ** np.maximum(lag, 0)) / (1 - beta), 0.0)
    np.testing.assert_allclose(co.c, expected_c, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(co.close_w, (1 - beta ** (k_steps - k)) / (1 - beta), rtol=1e-14)
    np.testing.assert_allclose(co.close_m, beta ** (k_steps - 1 - k), rtol=1e-14)
    np.testing.assert_allclose(co.a_end, beta * (1 - beta**k_steps) / (1 - beta), rtol=1e-14)
    np.testing.assert_allclose(co.decay_end, beta**k_steps, rtol=1e-14)
    plain = coefficients(0.0, k_steps, jnp.float64)  # β = 0: W_k = W_0 − η Σ_{j<k} G_j
    np.testing.assert_array_equal(plain.a, 0.0)
    np.testing.assert_array_equal(plain.c, (lag > 0).astype(float))


@pytest.mark.parametrize("batch,chunk", [(4, 3), (7, 6), (2, 5)])
def test_batches_are_those_of_train_sgd(batch, chunk):
    """Same mini-batches as _batch_indices, across epoch boundaries not aligned with chunks."""
    key = jax.random.key(3)
    steps = 4 * chunk * (N // batch)
    perms = epoch_permutations(key, (steps - 1) // (N // batch) + 1, N)
    # Every case draws the batches of the same 300 steps (its own B), the most any case needs:
    # one vmapped draw of the same shape, compiled once.
    assert steps <= 300
    want = np.asarray(jax.vmap(lambda k: _batch_indices(key, k, N, batch))(jnp.arange(300)))
    for first in range(0, steps, chunk):
        got = chunk_batch_indices(perms, first, chunk, batch)
        np.testing.assert_array_equal(got, want[first : first + chunk])


MOMENTA = [
    0.0,  # β^K = 0: the sample basis folds its momentum coefficients at every chunk
    0.9,
    # β^K = 0.3⁶: the sample basis' momentum scale s falls below 1e-12 after four chunks (of six)
    # and is folded back into its coefficients.
    0.3,
]


BASES = ["weights", "samples"]


@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("momentum", MOMENTA)
def test_chunked_equals_per_step_sgd_float64(data64, momentum, basis):
    """The whole trajectory (every record, every parameter) equals train_sgd to float rounding,
    whether W is carried as such or as W(0) + C_Wᵀ X."""
    cfg = CFG
    p0, key = _params(1), jax.random.key(5)
    want = train_sgd(p0, key, data64, learning_rate=0.1, momentum=momentum, config=cfg)
    got = train_sgd_chunked(
        p0, key, data64, learning_rate=0.1, momentum=momentum, config=cfg, chunk=CHUNK, basis=basis
    )
    assert _max_relative_error(want.snapshots, got.snapshots) < 1e-10
    np.testing.assert_array_equal(got.t, want.t)
    for name in ("w_norm", "v_norm", "b", "Q", "loss", "cos_delta"):
        np.testing.assert_allclose(
            getattr(got.observables, name),
            getattr(want.observables, name),
            rtol=1e-10,
            atol=1e-12,
            err_msg=name,
        )
    np.testing.assert_array_equal(got.observables.cell_hash, want.observables.cell_hash)
    assert int(got.status) == OK and int(got.num_steps) == cfg.steps
    # The run moved: a test of equality between two frozen trajectories would prove nothing.
    assert float(want.observables.loss[-1]) < 0.9 * float(want.observables.loss[0])


@pytest.fixture(scope="module")
def float32_runs(dataset):
    """`LONG_CFG` in float32: train_sgd, and train_sgd_chunked (K = 3, ``observables="norms"``)
    in each basis."""
    data = training_data(dataset, jnp.float32)
    p0, key = jax.tree.map(lambda a: a.astype(jnp.float32), _params(4)), jax.random.key(8)
    per_step = train_sgd(p0, key, data, learning_rate=0.1, momentum=0.9, config=LONG_CFG)
    chunked = {
        basis: train_sgd_chunked(
            p0,
            key,
            data,
            learning_rate=0.1,
            momentum=0.9,
            config=LONG_CFG,
            chunk=LONG_CHUNK,
            observables="norms",
            basis=basis,
        )
        for basis in BASES
    }
    return per_step, chunked


@pytest.mark.parametrize("basis", BASES)
def test_chunked_equals_per_step_sgd_float32(float32_runs, basis):
    """150 steps in chunks of 3 (the two-level sum in blocks of one step) equal train_sgd to
    float32 rounding."""
    want, runs = float32_runs
    got = runs[basis]
    assert got.snapshots.W.dtype == jnp.float32
    assert _max_relative_error(want.snapshots, got.snapshots) < 1e-4


@pytest.mark.parametrize("basis", BASES)
def test_norms_mode_records_what_observe_records(data64, basis):
    """‖w_i‖ from W itself (observe) and, in the sample basis, from ‖w(0)‖² + 2 c·Xw(0) + c·Gc."""
    cfg = CFG
    p0, key = _params(3), jax.random.key(7)
    full = train_sgd_chunked(
        p0, key, data64, learning_rate=0.1, momentum=0.9, config=cfg, chunk=CHUNK
    )
    light = train_sgd_chunked(
        p0,
        key,
        data64,
        learning_rate=0.1,
        momentum=0.9,
        config=cfg,
        chunk=CHUNK,
        observables="norms",
        basis=basis,
    )
    assert isinstance(light.observables, NeuronNorms)
    for name in ("w_norm", "v_norm", "b"):
        np.testing.assert_allclose(
            getattr(light.observables, name), getattr(full.observables, name), rtol=1e-12
        )
    assert light.observables.w_norm.shape == (cfg.num_records, WIDTH)


@pytest.mark.parametrize("basis", BASES)
def test_shared_order_equals_per_seed_lanes_with_one_key(data64, basis):
    """Stacking seeds along the neuron axis changes nothing when every seed has the same order."""
    cfg = CFG
    p0 = _stack([_params(s) for s in range(3)])
    key = jax.random.key(9)
    shared = train_sgd_seeds_shared_order(
        p0, key, data64, learning_rate=0.1, momentum=0.9, config=cfg, chunk=CHUNK, basis=basis
    )
    lanes = train_sgd_chunked_seeds(
        p0,
        jnp.stack([key] * 3),
        data64,
        learning_rate=0.1,
        momentum=0.9,
        config=cfg,
        chunk=CHUNK,
        basis=basis,
    )
    assert shared.observables.w_norm.shape == (3, cfg.num_records, WIDTH)
    assert _max_relative_error(shared.snapshots, lanes.snapshots) < 1e-12
    assert _max_relative_error(shared.observables, lanes.observables) < 1e-12
    np.testing.assert_array_equal(shared.t, lanes.t)
    np.testing.assert_array_equal(shared.status, [OK] * 3)


@pytest.mark.parametrize("basis", BASES)
def test_vmapped_seeds_equal_python_loop(data64, basis):
    """Per-seed orders and per-seed learning rates: the vmapped sweep equals one run per seed."""
    cfg = CFG
    params = [_params(10 + s) for s in range(3)]
    keys = jax.random.split(jax.random.key(11), 3)
    rates = jnp.array([0.05, 0.1, 0.2])
    swept = train_sgd_chunked_seeds(
        _stack(params),
        keys,
        data64,
        learning_rate=rates,
        momentum=0.9,
        config=cfg,
        chunk=CHUNK,
        basis=basis,
    )
    for s in range(3):
        one = train_sgd_chunked(
            params[s],
            keys[s],
            data64,
            learning_rate=float(rates[s]),
            momentum=0.9,
            config=cfg,
            chunk=CHUNK,
            observables="norms",
            basis=basis,
        )
        lane = jax.tree.map(lambda a: a[s], swept)
        assert _max_relative_error(one.snapshots, lane.snapshots) < 1e-12
        assert _max_relative_error(one.observables, lane.observables) < 1e-12
        np.testing.assert_allclose(lane.t, one.t)
    # Different orders give different trajectories (the keys are really used).
    assert _max_relative_error(swept.snapshots.W[0], swept.snapshots.W[1]) > 1e-3


def test_diverged_seed_is_a_status_not_an_exception(data64):
    swept = train_sgd_chunked_seeds(
        _stack([_params(20), _params(21), _params(22)]),
        jax.random.split(jax.random.key(0), 3),
        data64,
        learning_rate=jnp.array([0.1, 1e200, 0.1]),
        momentum=0.9,
        config=CFG,
        chunk=CHUNK,
    )
    np.testing.assert_array_equal(swept.status, [OK, NON_FINITE, OK])
    assert np.all(np.isfinite(swept.snapshots.W[0])) and np.all(np.isfinite(swept.snapshots.W[2]))


def test_no_retrace_for_new_seeds_or_values(data64):
    """New initial parameters, keys, learning rates and momenta reuse one compilation."""
    kw = dict(config=CFG, chunk=CHUNK, observables="norms")

    def three(first):
        return _stack([_params(first + s) for s in range(3)])

    train_sgd_chunked(_params(0), jax.random.key(0), data64, learning_rate=0.1, momentum=0.9, **kw)
    train_sgd_seeds_shared_order(
        three(0), jax.random.key(0), data64, learning_rate=0.1, momentum=0.9, **kw
    )
    train_sgd_chunked_seeds(
        three(0),
        jax.random.split(jax.random.key(0), 3),
        data64,
        learning_rate=0.1,
        momentum=0.9,
        **kw,
    )
    sizes = [f._cache_size() for f in (_train_one, _train_stacked, _train_per_seed)]
    for i, (lr, beta) in enumerate([(0.05, 0.0), (0.2, 0.5), (0.01, 0.99)]):
        train_sgd_chunked(
            _params(30 + i), jax.random.key(i + 1), data64, learning_rate=lr, momentum=beta, **kw
        )
        train_sgd_seeds_shared_order(
            three(40 + 3 * i), jax.random.key(i), data64, learning_rate=lr, momentum=beta, **kw
        )
        train_sgd_chunked_seeds(
            three(50 + 3 * i),
            jax.random.split(jax.random.key(i), 3),
            data64,
            learning_rate=jnp.array([lr, 2 * lr, 3 * lr]),
            momentum=beta,
            **kw,
        )
    assert [f._cache_size() for f in (_train_one, _train_stacked, _train_per_seed)] == sizes


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(chunk=5), "chunk"),
        (dict(chunk=0), "chunk"),
        (dict(observables="everything"), "observables"),
        (dict(basis="pixels"), "basis"),
        (dict(config=SGDConfig(steps=36, record_every=12, batch_size=None)), "batch_size"),
        (dict(config=SGDConfig(steps=36, record_every=12, batch_size=31)), "batch_size"),
    ],
)
def test_bad_configuration_is_rejected_with_the_field_name(data64, change, message):
    kw = dict(learning_rate=0.1, momentum=0.9, config=CFG, chunk=CHUNK)
    kw.update(change)
    with pytest.raises(ValueError, match=message):
        train_sgd_chunked(_params(0), jax.random.key(0), data64, **kw)


def test_shared_order_needs_shared_hyperparameters(data64):
    with pytest.raises(ValueError, match="learning_rate"):
        train_sgd_seeds_shared_order(
            _stack([_params(0), _params(1)]),
            jax.random.key(0),
            data64,
            learning_rate=jnp.array([0.1, 0.2]),
            momentum=0.9,
            config=CFG,
            chunk=CHUNK,
        )


def test_auto_basis_takes_the_one_with_fewer_flops():
    """The paper's workload (N = 800 < 2D = 2048, many steps) runs in the sample basis; many
    samples, or one short chunk, keep the weights."""
    assert resolve_basis("auto", 800, 1024, 4, 1000) == "samples"
    assert resolve_basis("auto", 60_000, 784, 4, 1000) == "weights"
    assert resolve_basis("auto", 800, 1024, 4, 1) == "weights"
    assert resolve_basis("weights", 800, 1024, 4, 1000) == "weights"


def test_sample_basis_float32_on_a_long_run(float32_runs):
    """The coefficients C and G C are accumulated over many chunks: after 20 epochs in float32
    the sample basis still agrees with the weight basis to float32 rounding of the trajectory."""
    _, runs = float32_runs
    assert _max_relative_error(runs["weights"].snapshots, runs["samples"].snapshots) < 1e-4
    np.testing.assert_allclose(
        runs["samples"].observables.w_norm, runs["weights"].observables.w_norm, rtol=1e-4
    )

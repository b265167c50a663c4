"""The lazy–rich map (docs/regimes.md): the tangent kernel against a Jacobian, the linearised
twin's exactness at θ₀, the second-order remainder, the lazy limit as σ grows, and the kernel
change in the lazy and the rich regime; the script's --quick run."""

import csv
import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow import _regimes, regimes

F64 = jnp.float64
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _tiny(key=0, width=5, dim=3, classes=3, sigma=0.7):
    p = gflow.init_params(jax.random.key(key), width, dim, sigma, dtype=F64, classes=classes)
    return p._replace(b=0.2 * jax.random.normal(jax.random.key(key + 1), (width,), F64))


def _jacobian_gram(params, x, model):
    J = jax.jacfwd(lambda p: gflow.logits(p, x, model).reshape(-1))(params)
    J = jnp.concatenate([a.reshape(a.shape[0], -1) for a in J], axis=1)
    return J @ J.T


@pytest.mark.parametrize(
    "model", [gflow.Model(), gflow.Model("softplus", beta=2.0, loss="square")], ids=str
)
def test_kernel_is_the_jacobian_gram(model):
    params = _tiny()
    x = jax.random.normal(jax.random.key(7), (4, 3), F64)
    k = regimes.kernel(params, x, model)
    assert k.shape == (4 * 3, 4 * 3)
    np.testing.assert_allclose(k, _jacobian_gram(params, x, model), rtol=0, atol=1e-12)
    # The twin's kernel is the network's at θ₀, wherever the twin is evaluated.
    twin = gflow.linearised(params, model)
    moved = jax.tree.map(lambda a: a + 0.3, params)
    np.testing.assert_allclose(regimes.kernel(moved, x, twin), k, rtol=0, atol=1e-12)


def test_kernel_in_chunks_of_one_output(monkeypatch):
    params = _tiny(width=4, dim=2, classes=2)
    x = jax.random.normal(jax.random.key(3), (3, 2), F64)
    monkeypatch.setattr(_regimes, "KERNEL_CHUNK_ENTRIES", 1)  # one cotangent at a time
    k = regimes.kernel(params, x, gflow.Model())
    np.testing.assert_allclose(k, _jacobian_gram(params, x, gflow.Model()), rtol=0, atol=1e-12)


def test_kernel_change_and_relative_change_by_hand():
    params = _tiny(width=4, dim=2, classes=2)
    x = jax.random.normal(jax.random.key(3), (5, 2), F64)
    assert float(regimes.kernel_change(params, params, x)) == 0.0
    # Every block of the ReLU net's J (a_i for v_i, v_i g_i x̃ for w̃_i) is linear in the weights,
    # so scaling all of them by c scales Θ by c²: the change is c² − 1.
    scaled = jax.tree.map(lambda a: 2.0 * a, params)
    assert float(regimes.kernel_change(scaled, params, x)) == pytest.approx(3.0, rel=1e-12)
    assert float(regimes.relative_change(scaled, params)) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("loss", ["cross_entropy", "square"])
def test_the_twin_is_the_network_to_first_order_and_exactly_linear(loss):
    model = gflow.Model(loss=loss)
    p0 = _tiny(classes=2)
    twin = gflow.linearised(p0, model)
    x = jax.random.normal(jax.random.key(5), (6, 3), F64)
    y = jnp.array([0, 1, 1, 0, 1, 0])
    np.testing.assert_allclose(gflow.logits(p0, x, twin), gflow.logits(p0, x, model), atol=1e-14)
    g_net = jax.grad(gflow.loss)(p0, x, y, model)
    g_twin = jax.grad(gflow.loss)(p0, x, y, twin)
    for a, b in zip(g_net, g_twin):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)
    delta = jax.tree.map(lambda a: jax.random.normal(jax.random.key(9), a.shape, F64), p0)
    f = gflow.logits(p0, x, twin)
    f1 = gflow.logits(jax.tree.map(lambda a, b: a + b, p0, delta), x, twin)
    f2 = gflow.logits(jax.tree.map(lambda a, b: a + 2 * b, p0, delta), x, twin)
    np.testing.assert_allclose(f2 - f, 2 * (f1 - f), rtol=1e-12, atol=1e-12)


def _remainder_and_bound(p0, delta, eps, x):
    """f − f_lin at θ₀ + εδ, and the ReLU remainder written out: Σ_i Δv_i g_i Δz_i plus, where a
    gate flips (|z_i| < |Δz_i|), (v_i + Δv_i) times |z_i + Δz_i| ≤ Δz_i²/|z_i|."""
    p = jax.tree.map(lambda a, b: a + eps * b, p0, delta)
    r = gflow.logits(p, x) - gflow.logits(p, x, gflow.linearised(p0))
    z = gflow.preactivations(p0, x)
    dz = eps * gflow.preactivations(delta, x)
    g = (z > 0).astype(F64)
    cross = (g * dz) @ (eps * delta.V)
    flip = (jax.nn.relu(z + dz) - g * (z + dz)) @ (p0.V + eps * delta.V)
    bound = (jnp.abs(g * dz) @ jnp.abs(eps * delta.V)) + (
        jnp.where(jnp.abs(z) < jnp.abs(dz), dz**2 / jnp.abs(z), 0.0) @ jnp.abs(p0.V + eps * delta.V)
    )
    return r, cross + flip, bound, bool(jnp.any(jnp.abs(z) < jnp.abs(dz)))


def test_the_remainder_is_second_order():
    """f(θ₀ + εδ) − f_lin(θ₀ + εδ) = O(ε²): exactly ×4 per doubling of ε while no gate flips,
    and bounded by the second-order terms of the ReLU remainder when gates do flip."""
    p0 = _tiny(width=8, dim=3, classes=2, sigma=1.0)
    delta = jax.tree.map(lambda a: jax.random.normal(jax.random.key(11), a.shape, F64), p0)
    x = jax.random.normal(jax.random.key(12), (10, 3), F64)
    r1, _, _, flips1 = _remainder_and_bound(p0, delta, 1e-4, x)
    r2, _, _, flips2 = _remainder_and_bound(p0, delta, 2e-4, x)
    assert not flips1 and not flips2
    np.testing.assert_allclose(r2, 4 * r1, rtol=1e-6)
    flipped = 0
    for eps in (1e-3, 1e-2, 1e-1, 0.5):
        r, exact, bound, flips = _remainder_and_bound(p0, delta, eps, x)
        flipped += flips
        np.testing.assert_allclose(r, exact, rtol=1e-9, atol=1e-13)
        assert np.all(np.abs(r) <= bound + 1e-13)
    assert flipped  # the flip terms were exercised


# --------------------------------------------------------------------------- lazy and rich

WIDTH, DIM, SAMPLES, STEPS = 64, 16, 128, 100
LAZY_SIGMAS = (1.0, 2.0, 4.0, 8.0)
SEEDS = (0, 1, 2)
HORIZON = 4.0  # flow time t = HORIZON/(dσ²): a fixed amount of lazy training at every σ


@pytest.fixture(scope="module")
def data():
    ds = gflow.gaussian_clusters(n_samples=SAMPLES, dim=DIM, test_samples=0)
    return gflow.training_data(ds, F64)


def _gd_twins(data, sigmas, seeds, times):
    """Full-batch GD of the network and its twin (cross-entropy), one vmapped call over
    (seed, σ) with η = t/STEPS; returns θ₀, the end of each and the loss records."""
    combos = [(s, sg, t) for s in seeds for sg, t in zip(sigmas, times)]
    p0 = jax.vmap(lambda k, sg: gflow.init_params(k, WIDTH, DIM, sg, dtype=F64))(
        jnp.stack([jax.random.key(s) for s, _, _ in combos]),
        jnp.array([sg for _, sg, _ in combos], F64),
    )
    lrs = jnp.array([t / STEPS for _, _, t in combos], F64)
    config = gflow.SGDConfig(steps=STEPS, record_every=STEPS)
    net, twin = jax.vmap(
        lambda p, lr: regimes.train_twins(p, data, config=config, learning_rate=lr, throw=False)
    )(p0, lrs)
    assert np.all(np.asarray(net.status) == 0) and np.all(np.asarray(twin.status) == 0)

    def lane(tree, *index):
        return jax.tree.map(lambda a: a[index], tree)

    return [
        (lane(p0, i), lane(net.snapshots, i, -1), lane(twin.snapshots, i, -1), net, twin, i)
        for i in range(len(combos))
    ]


RICH_SIGMA, RICH_TIME = 1e-3, 60.0  # past the loss drop at this σ


def _lazy_measures(data):
    """The lazy runs (each seed, each σ of `LAZY_SIGMAS`) and one rich run per seed, in one
    vmapped call: (distance, relative change) ``[seed, σ]`` and the runs."""
    sigmas = (*LAZY_SIGMAS, RICH_SIGMA)
    times = [HORIZON / (WIDTH * s**2) for s in LAZY_SIGMAS] + [RICH_TIME]
    runs = _gd_twins(data, sigmas, SEEDS, times)
    dist = np.empty((len(SEEDS), len(LAZY_SIGMAS)))
    rel = np.empty_like(dist)
    for p0, p, q, _, _, i in runs:
        s, j = divmod(i, len(sigmas))
        if j < len(LAZY_SIGMAS):
            dist[s, j] = float(regimes.function_distance(p, q, data.x, gflow.linearised(p0)))
            rel[s, j] = float(regimes.relative_change(p, p0))
    return dist, rel, runs


@pytest.fixture(scope="module")
def lazy(data):
    return _lazy_measures(data)


def _slope(sigmas, values):
    return float(np.polyfit(np.log(sigmas), np.log(values), 1)[0])


def test_lazy_limit_relative_change_falls_as_one_over_d_sigma2(lazy):
    """Over the horizon t = 4/(dσ²), each neuron moves by ~1/(dσ): ‖θ − θ₀‖/‖θ₀‖ ~ 1/(dσ²).
    Measured slopes −1.94, −1.96, −1.99 (seeds 0–2, σ = 1 … 8, d = 64)."""
    _, rel, _ = lazy
    for seed_rel in rel:
        assert _slope(LAZY_SIGMAS, seed_rel) == pytest.approx(-2.0, abs=0.15)
    assert np.all(rel[:, 0] < 0.1)


def test_lazy_limit_the_twin_follows_the_network(lazy):
    """The network–twin distance over the same horizon. The w–v cross term of the remainder
    predicts 1/(dσ²); the gate flips add a term whose RMS falls only as ~1/(dσ)
    (docs/regimes.md). Measured (geometric mean over seeds 0–2): 0.020, 0.010, 0.0016, 0.00029 at
    σ = 1, 2, 4, 8 (slope −2.1); single seeds give −2.6, −1.6, −2.1, and over eight seeds the
    slope is −1.7 (geometric mean) and −1.2 (RMS), so −2 ± 0.3 is not asserted. Asserted: the
    distance is small, falls at every doubling of σ and at least as fast as the flip term's 1/σ
    over σ = 1 … 8."""
    dist, _, _ = lazy
    mean = np.exp(np.mean(np.log(dist), axis=0))
    assert np.all(dist < 0.05)
    assert np.all(np.diff(mean) < 0)
    assert mean[-1] / mean[0] < LAZY_SIGMAS[0] / LAZY_SIGMAS[-1]


def test_kernel_change_small_when_lazy_large_when_rich(data, lazy):
    """Same d = 64: at σ = 8 (lazy, t = 4/(dσ²)) the kernel barely moves; at σ = 1e-3 (rich,
    GD to t = 60, past the loss drop) it grows from Θ ~ dσ² to O(1). Measured: 5e-5 … 1e-4 lazy
    (seeds 0–2), 1.7e5 rich; there the twin's loss is still log 2, the top 10% of neurons hold
    57% of Σ P_i (the twin's: 38%) and the 64 neurons form 13 clusters (the twin's: 61)."""
    _, _, runs = lazy
    x = data.x[:16]
    per_seed = len(LAZY_SIGMAS) + 1
    lazy_changes = [
        float(regimes.kernel_change(p, p0, x))
        for p0, p, _, _, _, i in runs
        if i % per_seed == len(LAZY_SIGMAS) - 1
    ]
    p0, p, q, net, twin, i = runs[len(LAZY_SIGMAS)]  # seed 0, σ = 1e-3
    rich = float(regimes.kernel_change(p, p0, x))
    assert max(lazy_changes) < 1e-2
    assert rich > 1e3
    assert float(net.observables.loss[i, -1]) < 0.05
    assert float(twin.observables.loss[i, -1]) > 0.69
    assert regimes.top_share(p) > regimes.top_share(q) + 0.1
    assert gflow.capacity.count_clusters(p) < WIDTH / 2


def test_twin_run_measures_every_snapshot(data):
    p0 = gflow.init_params(jax.random.key(0), 6, DIM, 0.5, dtype=F64)
    small = gflow.TrainingData(data.x[:20], data.y[:20], data.signed_labels[:20], *data[3:])
    config = gflow.SGDConfig(steps=STEPS, record_every=STEPS // 4, snapshot_every=2)
    run = regimes.twin_run(p0, small, config=config, learning_rate=0.05)
    assert (
        run.t.shape == (3,) and run.kernel_change[0] == 0.0 and np.isnan(run.function_distance[0])
    )
    assert np.all(run.relative_change[1:] > 0) and np.all(np.isfinite(run.function_distance[1:]))
    assert 0.1 <= run.top_share <= 1 and 1 <= run.clusters <= 6
    final = jax.tree.map(lambda a: a[-1], run.network.snapshots)
    assert run.relative_change[-1] == pytest.approx(float(regimes.relative_change(final, p0)))


def test_bad_input_is_refused():
    p = _tiny(width=4, dim=2, classes=2)
    x = jnp.ones((3, 2), F64)
    with pytest.raises(ValueError, match="columns"):
        regimes.kernel(p, jnp.ones((3, 5), F64))
    with pytest.raises(ValueError, match="non-empty"):
        regimes.kernel(p, jnp.ones((0, 2), F64))
    with pytest.raises(ValueError, match="disagree"):
        regimes.kernel(p._replace(b=jnp.zeros(3, F64)), x)
    with pytest.raises(ValueError, match="same shapes"):
        regimes.relative_change(p, _tiny(width=5, dim=2, classes=2))
    with pytest.raises(ValueError, match="linearised"):
        regimes.function_distance(p, p, x, gflow.Model())
    with pytest.raises(ValueError, match="fraction"):
        regimes.top_share(p, 0.0)
    with pytest.raises(ValueError, match="the flow needs"):
        regimes.train_twins(p, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="learning_rate"):
        regimes.train_twins(p, None, config=gflow.SGDConfig(steps=1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a linearised"):
        regimes.train_twins(p, None, [0.0, 1.0], model=gflow.linearised(p))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the script


def _load_script():
    spec = importlib.util.spec_from_file_location("lazy_rich", SCRIPTS / "lazy_rich.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lazy_rich_quick(tmp_path):
    assert _load_script().main(["--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "lazy_rich.png").read_bytes()[:8] == PNG_MAGIC
    record = json.loads((tmp_path / "lazy_rich.json").read_text())
    with (tmp_path / "lazy_rich.csv").open() as f:
        rows = list(csv.DictReader(f))
    s = record["settings"]
    assert len(rows) == len(record["rows"]) == len(s["sigmas"]) * len(s["widths"]) * len(s["seeds"])
    assert all(record["checks"].values())
    for row, entry in zip(rows, record["rows"]):
        for key, value in entry.items():
            if isinstance(value, float):
                assert float(row[key]) == pytest.approx(value, rel=1e-12), key
            elif isinstance(value, bool):
                assert row[key] == str(value), key
            else:
                assert row[key] == str(value), key
        assert entry["test_accuracy_gap"] == pytest.approx(
            entry["test_accuracy"] - entry["twin_test_accuracy"]
        )
    for entry in record["summary"]:
        mine = [r for r in record["rows"] if r["sigma"] == entry["sigma"]]
        mine = [r for r in mine if r["width"] == entry["width"]]
        assert entry["kernel_change"] == pytest.approx(np.mean([r["kernel_change"] for r in mine]))
    # Rich (σ = 0.01, d = 8) against lazy-ish (σ = 1): the kernel moves far more in the former.
    by_sigma = {r["sigma"]: r for r in record["rows"]}
    assert by_sigma[0.01]["kernel_change"] > 10 * by_sigma[1.0]["kernel_change"]

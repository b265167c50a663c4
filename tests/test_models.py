"""The generalised model (docs/theory.md §10): K classes, square loss, leaky ReLU, softplus — the
gradient against its closed form, the phase-1 targets against the paper's for K = 2 and the
simplex for K > 2, the balance conserved exactly when the activation is homogeneous."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow.network import Model, closed_form_gradient, loss, phase1_targets

MODELS = [
    Model(),
    Model(loss="square"),
    Model("leaky_relu", slope=0.2),
    Model("softplus", beta=4.0),
]


@pytest.fixture(scope="module")
def three():
    ds = gflow.mnist_default(n_per_class=12, groups=((0,), (1,), (7,)))
    return gflow.training_data(ds, jnp.float64)  # float64: tests/conftest.py enables it


def _start(three, key: int, sigma: float):
    """Six float64 neurons with K = 3 outputs for the three-class task."""
    return gflow.init_params(
        jax.random.key(key), 6, three.x.shape[1], sigma, dtype=jnp.float64, classes=3
    )


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.describe())
@pytest.mark.parametrize("classes", [2, 3])
def test_gradient_matches_closed_form(model, classes):
    rng = np.random.default_rng(classes)
    x = jnp.asarray(rng.normal(size=(30, 6)))
    y = jnp.asarray(np.arange(30) % classes)
    p = gflow.init_params(jax.random.key(1), 7, 6, 0.7, dtype=jnp.float64, classes=classes)
    auto = jax.grad(loss)(p, x, y, model)
    closed = closed_form_gradient(p, x, y, model)
    for a, b in zip(auto, closed):
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-12 * float(jnp.max(jnp.abs(a)))


def test_phase1_targets_reduce_to_the_papers_for_two_classes():
    data = gflow.training_data(gflow.mnist_default(n_per_class=15), jnp.float64)
    p = gflow.init_params(jax.random.key(2), 9, data.x.shape[1], 1.0, dtype=jnp.float64)
    gates = gflow.gating_pattern(p, data.x)
    u1, v1, s1 = phase1_targets(gates, data, 2)
    signed = gflow.network.cell_signed_sums(gates, data)
    norm = jnp.linalg.norm(signed, axis=1)
    n = data.x.shape[0]
    np.testing.assert_allclose(2 * s1, np.sqrt(2.0) * norm / n, rtol=1e-12)
    cos = jnp.abs(jnp.sum(u1 * signed, axis=1)) / norm
    np.testing.assert_allclose(cos, 1.0, rtol=1e-12)
    np.testing.assert_allclose(jnp.abs(v1), 1 / np.sqrt(2.0), rtol=1e-12)


def test_cross_entropy_targets_lie_in_the_simplex_plane(three):
    """r_s(0) = 1/K − e_c sums to 0 over classes, so v₁ ⟂ (1, …, 1); a cell holding one class only
    has v₁ ∝ e_c − 1/K, a vertex of the regular simplex."""
    y = np.asarray(three.y)
    gates = jnp.stack([y == 0, y == 2, np.ones_like(y, bool)], axis=1)
    _, v1, _ = phase1_targets(gates, three, 3)
    np.testing.assert_allclose(jnp.sum(v1, axis=1), 0.0, atol=1e-12)
    for col, c in ((0, 0), (1, 2)):
        vertex = np.eye(3)[c] - 1 / 3
        vertex /= np.linalg.norm(vertex)
        np.testing.assert_allclose(v1[col], vertex, atol=1e-12)
    _, v_sq, _ = phase1_targets(gates, three, 3, Model(loss="square"))
    np.testing.assert_allclose(v_sq[0], np.eye(3)[0], atol=1e-12)  # square loss: −r(0) = e_c


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.describe())
def test_balance_rate_vanishes_iff_the_activation_is_homogeneous(model, three):
    """dQ_i/dt = −2(⟨θ_i, ∇_{θ_i}L⟩ − ⟨v_i, ∇_{v_i}L⟩), zero by Euler's identity when σ(λz) =
    λσ(z), pointwise along any trajectory."""
    p = _start(three, 5, 0.7)
    g = closed_form_gradient(p, three.x, three.y, model)
    incoming = jnp.sum(p.W * g.W, axis=1) + p.b * g.b
    outgoing = jnp.sum(p.V * g.V, axis=1)
    rate = -2 * (incoming - outgoing)
    scale = float(jnp.max(jnp.abs(outgoing)))
    if model.homogeneous:
        assert float(jnp.max(jnp.abs(rate))) <= 1e-12 * scale
    else:
        assert float(jnp.max(jnp.abs(rate))) >= 1e-3 * scale


def test_softplus_moves_the_balance_along_the_flow(three):
    """Along a Dopri8 solve for K = 3 the softplus network's Q_i drifts (8e-5 by t = 0.5, where
    the ReLU and leaky ReLU keep it to 2e-15 on the same solve); the homogeneous models'
    conservation is tested along the sliding integrator below and through the loss drop in
    tests/test_trainers.py and tests/test_sliding*.py."""
    p0 = _start(three, 3, 0.3)
    cfg = gflow.FlowConfig(solver="dopri8", rtol=1e-10, max_steps=20_000)
    traj = gflow.gradient_flow(
        p0, three, np.linspace(0.0, 0.5, 5), config=cfg, model=Model("softplus", beta=4.0)
    )
    assert traj.observables.loss[-1] < traj.observables.loss[0]
    assert float(gflow.balance_drift(traj.observables).max()) >= 1e-6


@pytest.mark.parametrize("model", [Model(), Model(loss="square")], ids=lambda m: m.describe())
def test_gd_approaches_the_flow_at_first_order_for_three_classes(model, three):
    p0 = _start(three, 4, 1.0)
    t_end = 0.5
    cfg = gflow.FlowConfig(solver="dopri8", rtol=1e-10, max_steps=20_000)
    ref = gflow.gradient_flow(p0, three, np.array([0.0, t_end]), config=cfg, model=model)
    errors = []
    for eta, at in ((0.02, 1), (0.01, 2)):  # t = 0.5 at record `at` (one compiled program)
        gd = gflow.train_gd(
            p0,
            three,
            learning_rate=eta,
            model=model,
            config=gflow.SGDConfig(steps=50, record_every=25),
        )
        errors.append(float(jnp.max(jnp.abs(gd.observables.P[at] - ref.observables.P[-1]))))
    ratio = errors[0] / errors[1]
    assert 1.7 < ratio < 2.3, (errors, ratio)


def test_labels_beyond_the_outputs_are_refused(three):
    """Also inside a caller's jit (data closed over, as a vmapped sweep has them), where the
    check must read the concrete labels without tracing them; right-sized networks run there."""
    gd_cfg = gflow.SGDConfig(steps=2, record_every=1)
    flow_cfg = gflow.FlowConfig(solver="euler", adaptive=False, dt0=0.5)
    ts = jnp.linspace(0.0, 1.0, 3)

    def gd(p):
        return gflow.train_gd(p, three, learning_rate=0.1, config=gd_cfg).observables.loss

    def flow(p):
        return gflow.gradient_flow(p, three, ts, config=flow_cfg, throw=False).observables.loss

    p0 = gflow.init_params(jax.random.key(0), 4, three.x.shape[1], 0.1)  # K = 2, labels reach 2
    for run in (gd, jax.jit(gd), jax.jit(flow)):
        with pytest.raises(ValueError, match="K = 2 outputs"):
            run(p0)
    p3 = gflow.init_params(jax.random.key(0), 4, three.x.shape[1], 0.1, classes=3)
    for run in (gd, flow):
        np.testing.assert_allclose(jax.jit(run)(p3), run(p3), rtol=1e-12)


def test_run_config_builds_the_model_and_classes():
    cfg = gflow.RunConfig(classes="0/1/2", loss="square", activation="leaky_relu:0.1")
    assert cfg.num_classes() == 3
    assert cfg.model() == Model("leaky_relu", slope=0.1, loss="square")
    with pytest.raises(ValueError, match="activation"):
        gflow.RunConfig(activation="tanh")


def test_sliding_integrator_follows_other_models_at_second_order(three):
    """The sliding integrator with the model's jumps (1 − α)c and loss, for K = 3: second-order
    convergence to Dopri8 (error ratios 3.5 and 3.9 per halving of h, measured), balance to
    rounding, and observables of the model itself (the loss agrees with the reference's). The
    leaky ReLU under cross-entropy is tested in tests/test_sliding_leaky.py."""
    model = Model("leaky_relu", slope=0.1, loss="square")
    p0 = _start(three, 3, 0.3)
    ts = np.linspace(0.0, 0.5, 3)
    tight = gflow.FlowConfig(solver="dopri8", rtol=1e-10, atol=1e-12, max_steps=20_000)
    ref = gflow.gradient_flow(p0, three, ts, config=tight, model=model).observables
    errors = []
    for h in (0.02, 0.01, 0.005):
        cfg = gflow.FlowConfig(solver="sliding", adaptive=False, dt0=h)
        obs = gflow.gradient_flow(p0, three, ts, config=cfg, model=model).observables
        errors.append(float(jnp.max(jnp.abs(obs.P[-1] - ref.P[-1])) / jnp.max(ref.P[-1])))
        assert float(gflow.balance_drift(obs).max()) <= 1e-12
        np.testing.assert_allclose(obs.loss, ref.loss, rtol=1e-6)
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(orders >= 1.8), (errors, orders)


def test_ten_class_mnist_outgoing_weights_keep_their_offset_from_the_simplex_plane():
    """Under softmax cross-entropy Σ_k r_sk = 0 for every sample, so d/dt (1·v_i) =
    −(1/N) Σ_s σ(z_is) (1·r_s) = 0: each neuron's offset from the simplex plane is a first
    integral of the flow for every K (docs/theory.md §10.1), and v̂_i falls into the plane as
    ‖v_i‖ grows. GD conserves a linear first integral exactly, so on 10-class MNIST it holds to
    rounding. (The sliding integrator rescales (θ_i, v_i) to keep Q_i, which moves 1·v_i by its
    local error: on this problem to t = 120 the drift is 4.3e-7, 1.1e-7, 2.7e-8 at h = 0.2, 0.1,
    0.05, second order.)"""
    ds = gflow.mnist_default(n_per_class=10, groups=tuple((k,) for k in range(10)))
    data = gflow.training_data(ds, jnp.float64)
    p0 = gflow.init_params(
        jax.random.key(0), 8, data.x.shape[1], 1e-3, dtype=jnp.float64, classes=10
    )
    offset0 = jnp.sum(p0.V, axis=-1)
    gd = gflow.train_gd(
        p0,
        data,
        learning_rate=0.1,
        config=gflow.SGDConfig(steps=1200, record_every=400, snapshot_every=1),
    )
    V = gd.snapshots.V  # [time, d, K]
    scale = float(jnp.max(jnp.abs(V)))
    assert float(jnp.max(jnp.abs(jnp.sum(V, axis=-1) - offset0))) <= 1e-13 * scale
    grown = jnp.argmax(gd.observables.v_norm[-1])
    assert gd.observables.v_norm[-1, grown] > 100 * gd.observables.v_norm[0, grown]
    unit = V[-1, grown] / jnp.linalg.norm(V[-1, grown])
    assert abs(float(jnp.sum(unit))) / np.sqrt(10) < 1e-2
    assert gd.observables.loss[-1] < gd.observables.loss[0]


def test_run_command_trains_three_classes_with_the_square_loss(tmp_path):
    """`gflow run --classes 0/1/2 --loss square --activation leaky_relu:0.1`: a run folder whose
    network has K = 3 outputs and whose configuration records the model; the loss falls."""
    from gflow.cli import main

    out = tmp_path / "three"
    args = ["run", "--classes", "0/1/2", "--loss", "square", "--activation", "leaky_relu:0.1"]
    args += ["--n-per-class", "10", "--width", "4", "--sigma", "0.1", "--steps", "40"]
    args += ["--out", str(out), "--quiet"]
    assert main(args) == 0
    run = gflow.load_run(out)
    assert run.final_params.V.shape[-1] == 3
    assert gflow.RunConfig.from_mapping(run.config).model() == Model(
        "leaky_relu", slope=0.1, loss="square"
    )
    assert np.all(run.ok)
    loss = run.observables["loss"][0, 0]
    assert loss[-1] < loss[0]

"""The network, its gradients and the per-neuron observables against docs/theory.md §1–§4."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow.network import error_vectors


def _problem(seed=0, n=30, dim=5, width=7, sigma=0.3, bias=0.1, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    y = (rng.random(n) < 0.5).astype(int)
    y[:2] = [0, 1]
    ds = gflow.Dataset(x, y, name="rand", provenance="numpy normal draws")
    data = gflow.training_data(ds, dtype)
    p = gflow.init_params(jax.random.key(seed), width, dim, sigma, dtype=dtype)
    p = p._replace(b=jnp.asarray(bias * rng.normal(size=width), dtype))
    return p, data


def test_autodiff_equals_closed_form_equals_finite_differences():
    params, data = _problem()
    with jax.numpy_rank_promotion("raise"):
        auto = jax.grad(gflow.loss)(params, data.x, data.y)
        closed = gflow.closed_form_gradient(params, data.x, data.y)
    for a, c in zip(auto, closed):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-15)

    flat, unravel = jax.flatten_util.ravel_pytree(params)
    f = lambda v: gflow.loss(unravel(v), data.x, data.y)
    h = 1e-6
    rng = np.random.default_rng(1)
    g_auto = jax.flatten_util.ravel_pytree(auto)[0]
    for _ in range(8):  # directional derivatives along random directions
        u = jnp.asarray(rng.normal(size=flat.shape))
        fd = (f(flat + h * u) - f(flat - h * u)) / (2 * h)
        np.testing.assert_allclose(fd, g_auto @ u, rtol=1e-7)


def test_residual_directions_are_fixed():
    """r_s ∝ (−1, +1) for class 1 and (+1, −1) for class 2 (docs/theory.md §1, Appendix B.1)."""
    params, data = _problem(sigma=1.0)
    r = np.asarray(gflow.residuals(params, data.x, data.y))
    np.testing.assert_allclose(r[:, 0], -r[:, 1], atol=1e-15)
    assert np.all(np.where(np.asarray(data.y) == 0, r[:, 0] < 0, r[:, 0] > 0))


def test_init_scale_and_orthogonal_option():
    key = jax.random.key(3)
    p = gflow.init_params(key, 400, 50, 1e-3, dtype=jnp.float64)
    assert np.all(np.asarray(p.b) == 0)
    np.testing.assert_allclose(np.std(np.asarray(p.W)), 1e-3, rtol=0.02)
    np.testing.assert_allclose(np.std(np.asarray(p.V)), 1e-3, rtol=0.1)
    q = gflow.init_params(key, 6, 10, 1e-3, orthogonal=True, dtype=jnp.float64)
    gram = np.asarray(q.W @ q.W.T)
    off = gram - np.diag(np.diag(gram))
    assert np.max(np.abs(off)) < 1e-18
    with pytest.raises(ValueError, match="width d must be a positive integer"):
        gflow.init_params(key, 0, 10, 1e-3)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        gflow.init_params(key, 3, 10, -1.0)


def _time_derivative(fn, params, data):
    """d fn(θ(t))/dt along the flow, by a JVP with the vector field as tangent."""
    tangent = gflow.vector_field(0.0, params, data)
    return jax.jvp(lambda p: fn(p), (params,), (tangent,))[1]


def test_norm_speed_identity_and_balance_conservation():
    """d‖w_i‖/dt = ‖v_i‖‖e_i‖cos δ_i (docs/theory.md §2) and dQ_i/dt = 0, exactly, at a random
    point."""
    params, data = _problem(sigma=0.5)
    obs = gflow.observe(params, data)
    dw = _time_derivative(lambda p: jnp.linalg.norm(p.W, axis=1), params, data)
    np.testing.assert_allclose(dw, obs.v_norm * obs.e_norm * obs.cos_delta, rtol=1e-10, atol=1e-14)
    dq = _time_derivative(lambda p: gflow.observe(p, data).Q, params, data)
    scale = obs.w_norm**2 + obs.b**2 + obs.v_norm**2
    assert np.max(np.abs(dq) / scale) < 1e-12


def test_product_growth_identity_with_bias():
    """dP_i/dt = (‖w‖² + ‖v‖²)(e_i·ŵ_i) + ‖w‖ b_i β_i (docs/theory.md §4), an exact identity."""
    params, data = _problem(sigma=0.5, bias=0.3)
    obs = gflow.observe(params, data)
    dP = _time_derivative(lambda p: gflow.observe(p, data).P, params, data)
    e = error_vectors(params, data)
    w_hat = params.W / jnp.linalg.norm(params.W, axis=1, keepdims=True)
    v_hat = params.V / jnp.linalg.norm(params.V, axis=1, keepdims=True)
    g = gflow.gating_pattern(params, data.x).astype(data.x.dtype)
    r = gflow.residuals(params, data.x, data.y)
    beta = -jnp.sum(g * (r @ v_hat.T), axis=0) / data.x.shape[0]
    predicted = (obs.w_norm**2 + obs.v_norm**2) * jnp.sum(
        e * w_hat, axis=1
    ) + obs.w_norm * params.b * beta
    np.testing.assert_allclose(dP, predicted, rtol=1e-10, atol=1e-14)


def test_targets_and_observables_definitions():
    params, data = _problem(sigma=0.5, bias=0.0)
    obs = gflow.observe(params, data)
    x, ys = np.asarray(data.x), np.asarray(data.signed_labels)
    W, V = np.asarray(params.W), np.asarray(params.V)
    for i in range(W.shape[0]):
        gate = x @ W[i] > 0
        kappa = 1 if V[i, 0] > V[i, 1] else -1
        u = (ys[gate, None] * x[gate]).sum(axis=0)
        target = kappa * u / np.linalg.norm(u)
        assert obs.kappa[i] == kappa
        assert obs.active[i] == gate.sum()
        np.testing.assert_allclose(
            obs.cos_target[i], W[i] @ target / np.linalg.norm(W[i]), rtol=1e-12
        )
        np.testing.assert_allclose(obs.target_strength[i], np.linalg.norm(u) / len(x), rtol=1e-12)
        np.testing.assert_allclose(obs.phi[i], np.arctan2(V[i, 1], V[i, 0]), rtol=1e-12)
    gates = gflow.gating_pattern(params, data.x)
    T = gflow.target_directions(gates, obs.kappa, data)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(T), axis=1), 1.0, rtol=1e-12)
    # Equal gating patterns share a hash; the hash changes when one sample flips.
    h = np.asarray(
        gflow.network.cell_hash(jnp.stack([gates[:, 0], gates[:, 0], ~gates[:, 0]], axis=1))
    )
    assert h[0] == h[1] != h[2]


def test_dead_neuron_observables_are_finite():
    params, data = _problem()
    params = params._replace(
        W=params.W.at[0].set(0.0), b=params.b.at[0].set(0.0), V=params.V.at[1].set(0.0)
    )
    obs = gflow.observe(params, data)
    for name, value in obs._asdict().items():
        if name.startswith("test_"):
            continue
        assert np.all(np.isfinite(np.asarray(value, dtype=np.float64))), name
    assert obs.active[0] == 0 and obs.cos_target[0] == 0


_TYPECHECKED = """
import jaxtyping
from jaxtyping import install_import_hook

with install_import_hook("gflow._network", "beartype.beartype"):
    import gflow._network as net
import jax, jax.numpy as jnp, numpy as np

p = net.init_params(jax.random.key(0), 4, 3, 0.5)
x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)), jnp.float32)
y = jnp.array([0, 1, 0, 1, 1, 0])
assert float(net.loss(p, x, y)) > 0
assert net.closed_form_gradient(p, x, y).W.shape == (4, 3)
assert net.gating_pattern(p, np.asarray(x)).shape == (6, 4)
for call in (
    lambda: net.residuals(p, x[:5], y),  # 5 inputs, 6 labels: "samples" disagree
    lambda: net.logit_loss(jnp.zeros((5, 3)), y),  # logits of 5 samples, 6 labels
    lambda: net.loss(p, x, y.astype(jnp.float32)),  # labels must be integers
):
    try:
        call()
    except jaxtyping.TypeCheckError as err:
        print("rejected:", str(err).splitlines()[0][:60])
    else:
        raise SystemExit("a mis-shaped call passed the shape check")
"""


def test_shape_annotations_are_checked_at_run_time():
    """The jaxtyping annotations of the model's functions hold on correct calls and reject
    mismatched sample counts (inputs or logits against labels) and float labels (beartype)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _TYPECHECKED], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("rejected:") == 3

"""The discretisation analysis (docs/theory.md §1, §8.1): Richardson references on sequences of
known order, the first-order window, power-law step sizes, gate margins on constructed networks,
GD's chatter across a boundary the flow slides on, and perturbed starts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm

from gflow import Params, TrainingData, balance_drift, observe
from gflow.analysis import (
    gate_chatter,
    gate_margins,
    norms_balance_drift,
    perturbed_start,
    power_law_eta,
    relative_gaps,
    resolved_window,
    richardson,
    richardson_reference,
    trajectory_errors,
)


def test_relative_gaps_are_norms_of_the_whole_network_per_save_time():
    a = [np.array([[3.0, 0.0], [1.0, 1.0]]), np.array([[4.0], [1.0]])]
    b = [np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[0.0], [2.0]])]
    gaps = relative_gaps(a, b)
    assert gaps[0] == 5.0  # ‖θ_b‖ = 0: the absolute distance ‖(3, 0, 4)‖
    assert gaps[1] == pytest.approx(1.0 / np.sqrt(6.0))  # ‖(0, 0, −1)‖ / ‖(1, 1, 2)‖
    with pytest.raises(ValueError, match="shape"):
        relative_gaps(a, b[:1])


def test_trajectory_errors_take_the_worst_save_time():
    P_ref = np.array([[1.0, 2.0], [2.0, 4.0]])
    P = P_ref + np.array([[0.1, 0.0], [0.0, -0.2]])  # 0.1/2 at t0, 0.2/4 at t1
    theta_ref = [np.array([[1.0, 0.0], [0.0, 2.0]])]
    theta = [np.array([[1.0, 0.5], [0.0, 2.0]])]
    out = trajectory_errors(P, theta, P_ref, theta_ref)
    assert out == {"params": pytest.approx(0.5), "P": pytest.approx(0.05)}
    with pytest.raises(ValueError, match="P must be"):
        trajectory_errors(P[0], theta, P_ref[0], theta_ref)


def test_richardson_removes_the_leading_error_term_of_a_known_order_sequence():
    """y(η) = a + cη + dη² + eη³: one step leaves a − dη²/2 − 3eη³/4, the second level
    a + eη³/8; the uncertainty is ‖R(η/2) − reference‖/‖reference‖."""
    a, c, d, e, eta = np.array([[1.0, -2.0], [3.0, 0.5]]), 0.7, -1.3, 0.4, 0.1
    y = lambda h: a + c * h + d * h**2 + e * h**3
    assert np.allclose(richardson(y(eta), y(eta / 2)), a - d * eta**2 / 2 - 0.75 * e * eta**3)
    reference, uncertainty = richardson_reference([y(eta), y(eta / 2), y(eta / 4)])
    np.testing.assert_allclose(reference, a + e * eta**3 / 8, rtol=1e-12)
    r_half = a - d * eta**2 / 8 - 0.75 * e * (eta / 2) ** 3
    assert uncertainty is not None
    np.testing.assert_allclose(uncertainty, relative_gaps(r_half, reference), rtol=1e-12)
    two, none = richardson_reference([[y(eta)], [y(eta / 2)]])
    assert none is None and np.allclose(two[0], richardson(y(eta), y(eta / 2)))
    with pytest.raises(ValueError, match="2 or 3"):
        richardson_reference([y(eta)])
    with pytest.raises(ValueError, match="order"):
        richardson(y(eta), y(eta / 2), order=0)


def test_richardson_of_gd_on_a_linear_flow_is_second_order():
    """GD on L = ½ θᵀAθ is explicit Euler for θ̇ = −Aθ (docs/theory.md §1): its error at t = 1
    against expm(−A) halves with η, Richardson's falls 4×, the second level's 8×."""
    A = np.array([[2.0, 0.5], [0.5, 1.0]])
    theta0 = np.array([1.0, -1.0])
    exact = expm(-A) @ theta0

    def gd(eta):
        theta = theta0.copy()
        for _ in range(round(1 / eta)):
            theta = theta - eta * A @ theta
        return theta[None]

    err = lambda x: float(np.linalg.norm(np.asarray(x)[0] - exact))
    etas = [0.1 / 2**k for k in range(6)]
    schemes = {
        1: [err(gd(h)) for h in etas],
        2: [err(richardson(gd(h), gd(h / 2))) for h in etas],
        3: [err(richardson_reference([gd(h), gd(h / 2), gd(h / 4)])[0]) for h in etas],
    }
    for p, errors in schemes.items():
        # observed orders log2(err(η)/err(η/2)) approach p, with a correction shrinking like η
        observed = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
        gaps = np.abs(observed - p)
        assert np.all(np.diff(gaps) < 0) and gaps[-1] < 0.05, (p, observed)
    assert schemes[3][-1] < schemes[2][-1] < schemes[1][-1]


def test_resolved_window_ends_where_halving_eta_stops_shrinking_gd_change():
    """GD(η) = θ(t) + η e(t) converges at first order everywhere; a perturbation that does not
    shrink with η from the 7th save time on ends the window there."""
    t = np.linspace(0.0, 1.0, 11)
    truth = [
        np.stack([np.full((3, 2), 1.0 + s) for s in t]),
        np.stack([np.full(3, 2.0 - s) for s in t]),
    ]
    drift = [np.stack([np.full((3, 2), s * s) for s in t]), np.stack([np.full(3, s) for s in t])]
    runs = [[x + eta * e for x, e in zip(truth, drift)] for eta in (0.1, 0.05, 0.025)]
    assert resolved_window(runs) == 11
    kick = np.where(t >= t[6], 1.0, 0.0)
    for j in range(3):  # an O(1) change that alternates with the level
        runs[j][1] = runs[j][1] + (-1) ** j * 0.3 * kick[:, None]
    assert resolved_window(runs) == 6
    with pytest.raises(ValueError, match="η/4"):
        resolved_window(runs[:2])


def test_power_law_eta_inverts_an_exact_power_law():
    etas = np.array([0.1, 0.05, 0.025])
    for p, c in ((1.0, 4.0), (2.0, 3.0), (0.5, 0.2)):
        target = c * 0.0123**p
        assert power_law_eta(etas, c * etas**p, target) == pytest.approx(0.0123, rel=1e-10)
    assert power_law_eta(etas, [0.1, 0.2, 0.4], 0.05) is None  # error grows as η falls
    assert power_law_eta(etas, [0.1, 0.0, 0.4], 0.05) is None
    with pytest.raises(ValueError, match="matching"):
        power_law_eta(etas, [0.1, 0.2], 0.05)


def test_gate_margins_are_the_sines_of_the_angles_to_the_boundaries():
    """Neuron 0 lies on sample 0's boundary (w̃·x̃ = 0), neuron 1 along x̃_1; neuron 2 is tiny.
    Margins do not change when w̃_i is rescaled (the gate is positively homogeneous)."""
    x = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
    W = np.array([[0.0, 3.0, 0.0], [0.0, 2.0, 0.0], [1e-9, 0.0, 0.0]])
    b = np.array([0.0, 1.0, 0.0])
    V = np.array([[1.0, 0.0], [0.0, 2.0], [1e-9, 0.0]])
    scale = np.array([7.0, 0.5, 1.0])  # second save time: each w̃_i = (w_i, b_i) rescaled
    stacked = (np.stack([W, W * scale[:, None]]), np.stack([b, b * scale]), np.stack([V, V]))
    out = gate_margins(stacked, x, within=1e-3)
    x_t = np.hstack([x, np.ones((3, 1))])
    w_t = np.hstack([W, b[:, None]])
    sines = np.abs(x_t @ w_t.T) / np.outer(np.linalg.norm(x_t, axis=1), np.linalg.norm(w_t, axis=1))
    assert sines[0, 0] == 0.0 and sines[1, 1] == pytest.approx(1.0)
    # neuron 0 on sample 0, neuron 2 (w̃ along e_1) on sample 1: two pairs, at both save times
    assert out["boundary_pairs"] == [int(np.sum(sines < 1e-3))] * 2 == [2, 2]
    closest = np.median(sines[:, :2].min(axis=0))  # grown: neurons 0 and 1, not the tiny one
    assert out["median_closest_margin"] == [pytest.approx(closest)] * 2
    with pytest.raises(ValueError, match="x must be"):
        gate_margins(stacked, x[:, :2])


@pytest.mark.parametrize("eta", [0.05, 0.0125])
def test_gd_chatters_across_a_boundary_the_flow_slides_on(eta):
    """One neuron, v_i pointing to class 1; x_A = (1, 0.5) of class 1, x_B = (0, 1) of class 2,
    the neuron just off B's gate. Off it, A's term moves w̃·x̃_B up at the rate c·x̃_A·x̃_B = 1.5c;
    on it, B's term (of equal size c at p ≈ ½) adds −c·‖x̃_B‖² = −2c: the field points into
    the boundary from both sides (docs/theory.md §8), the flow slides along it and GD flips
    g(B) back and forth. With B of class 1 too, B's term pushes on through: its gate flips once
    and stays."""
    x = jnp.array([[1.0, 0.5], [0.0, 1.0]], jnp.float64)
    params = Params(W=jnp.array([[1.0, -0.01]]), b=jnp.array([0.0]), V=jnp.array([[0.5, -0.5]]))
    empty = (jnp.zeros((0, 2)), jnp.zeros((0,), jnp.int32))
    sliding = TrainingData(x, jnp.array([0, 1]), jnp.array([1.0, -1.0]), *empty)
    out = gate_chatter(params, eta, sliding, steps=40)
    assert out == {
        "steps": 40,
        "pairs_flipping": 1,
        "pairs_chattering": 1,
        "grown": 1,
        "grown_chattering": 1,
    }
    crossing = TrainingData(x, jnp.array([0, 0]), jnp.array([1.0, 1.0]), *empty)
    once = gate_chatter(params, eta, crossing, steps=40)
    assert once["pairs_flipping"] == 1 and once["pairs_chattering"] == 0


def test_norms_balance_drift_matches_the_observables_drift():
    """The drift from recorded (‖w_i‖, ‖v_i‖, b_i) equals `balance_drift` on the full
    observables (`observe`) of the same parameters at five save times (docs/theory.md §2)."""
    x = jnp.array([[1.0, 0.5], [0.0, 1.0], [-1.0, 0.3]], jnp.float64)
    empty = (jnp.zeros((0, 2)), jnp.zeros((0,), jnp.int32))
    data = TrainingData(x, jnp.array([0, 1, 0]), jnp.array([1.0, -1.0, 1.0]), *empty)
    rng = np.random.default_rng(0)
    shapes = {"W": (5, 4, 2), "b": (5, 4), "V": (5, 4, 2)}  # 5 save times, d = 4, D = 2
    stacked = Params(**{k: jnp.asarray(rng.standard_normal(v)) for k, v in shapes.items()})
    obs = jax.jit(jax.vmap(observe, in_axes=(0, None)))(stacked, data)
    drift = norms_balance_drift(obs.w_norm, obs.v_norm, obs.b)
    np.testing.assert_allclose(drift, np.asarray(balance_drift(obs)), rtol=1e-12)
    assert drift.shape == (4,) and np.all(drift > 0)  # independent draws: Q_i is not conserved


def test_perturbed_start_moves_every_weight_by_the_relative_size():
    rng = np.random.default_rng(0)  # a small start as `init_params` draws it: b = 0
    W, V = (1e-3 * rng.standard_normal(shape) for shape in ((300, 40), (300, 2)))
    params = Params(W=jnp.asarray(W), b=jnp.zeros(300, jnp.float64), V=jnp.asarray(V))
    moved = perturbed_start(params, 1e-6, jax.random.key(1))
    for a, m in zip(params, moved):
        a, m = np.asarray(a), np.asarray(m)
        ratio = m / np.where(a == 0, 1.0, a) - 1.0
        nonzero = a != 0
        assert np.all(m[~nonzero] == 0)  # b = 0 at the start stays 0
        if nonzero.any():
            n = int(nonzero.sum())  # ratio − 1 ~ N(0, ε²): 5-sigma bounds on its mean and spread
            assert abs(np.std(ratio[nonzero]) / 1e-6 - 1) < 5 / np.sqrt(2 * n)
            assert abs(np.mean(ratio[nonzero])) < 5e-6 / np.sqrt(n)
    with pytest.raises(ValueError, match="epsilon"):
        perturbed_start(params, 2.0, jax.random.key(1))

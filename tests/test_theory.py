"""Predictions of the theory (docs/theory.md §2–§5) against closed forms, autodiff and a float64 "
"ODE."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow.theory  # its validate_trajectory, which gflow validate calls, replaced in one test
from gflow import (
    Dataset,
    FlowConfig,
    Params,
    gaussian_clusters,
    gradient_flow,
    init_params,
    logits,
    training_data,
    vector_field,
)
from gflow.cli import main
from gflow.network import error_vectors, safe_norm
from gflow.theory import (
    Check,
    CheckSettings,
    bias_error,
    current_targets,
    group_phases,
    iterate_target_map,
    limit_angle,
    log_growth_slope,
    loss_drop_estimate,
    make_check,
    neuron_groups,
    outgoing_drive,
    predicted_kappa,
    race_predictions,
    second_order_targets,
    spearman_permutation_test,
    speed_identities,
    steady_second_order_target,
    steady_second_order_targets,
    unlocking_rates,
    validate_trajectory,
    window_mean,
    with_bias_input,
    wrapped_angle,
)

# The command-line tests at the end run gflow as users do, with JAX's default rank promotion.
_COMMAND_TESTS = ("test_validate_", "test_validation_report_")


@pytest.fixture(autouse=True)
def strict_rank_promotion(request):
    mode = "allow" if request.node.name.startswith(_COMMAND_TESTS) else "raise"
    with jax.numpy_rank_promotion(mode):
        yield


def gaussian_data(n=40, dim=6, seed=0, shift=0.3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)) + shift  # not centred, so trained biases matter
    y = np.arange(n) % 2
    return training_data(Dataset(x, y, name="gauss", provenance="test"), jnp.float64)


def random_params(width=9, dim=6, seed=1, scale=0.5):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return Params(
        W=scale * jax.random.normal(k1, (width, dim), jnp.float64),
        b=scale * jax.random.normal(k2, (width,), jnp.float64),
        V=scale * jax.random.normal(k3, (width, 2), jnp.float64),
    )


# --------------------------------------------------------------------------- phase 1


def test_limit_angle_and_kappa_by_loops():
    data = gaussian_data()
    params = random_params()
    x, ytil = np.asarray(data.x), np.asarray(data.signed_labels)
    W, b = np.asarray(params.W), np.asarray(params.b)
    angles = np.asarray(jax.jit(limit_angle)(params, data))
    kappa = np.asarray(jax.jit(predicted_kappa)(params, data))
    drives = np.asarray(jax.jit(outgoing_drive)(params, data))
    for i in range(W.shape[0]):
        drive = sum(max(0.0, float(W[i] @ x[s] + b[i])) * ytil[s] for s in range(x.shape[0]))
        assert drives[i] == pytest.approx(drive, rel=1e-12)
        assert kappa[i] == (1 if drive > 0 else -1)
        assert angles[i] == pytest.approx(-math.pi / 4 if drive > 0 else 3 * math.pi / 4)


def test_wrapped_angle():
    np.testing.assert_allclose(
        np.asarray(wrapped_angle(jnp.array([3.1, -3.1, 0.2]), jnp.array([-3.1, 3.1, -0.1]))),
        [2 * math.pi - 6.2, 2 * math.pi - 6.2, 0.3],
        atol=1e-12,
    )


def aligned_params(data, width=7, seed=3, v_scale=1e-3):
    """Weights with every v_i exactly on its limit line, κ_i alternating."""
    params = random_params(width, data.x.shape[1], seed, scale=1.0)
    kappa = np.where(np.arange(width) % 2 == 0, 1.0, -1.0)
    V = v_scale * np.stack([kappa, -kappa], axis=1) / math.sqrt(2)
    return params._replace(V=jnp.asarray(V), b=jnp.zeros(width))


def test_second_order_target_tends_to_first_order_as_outputs_vanish():
    data = gaussian_data(60, 5, seed=2, shift=0.0)
    angles = []
    for v_scale in (1e-2, 1e-3, 1e-4, 1e-5):
        params = aligned_params(data, v_scale=v_scale)
        first = jax.jit(current_targets)(params, data)
        second = jax.jit(second_order_targets)(params, data)
        angles.append(float(jnp.max(jnp.arccos(jnp.clip(jnp.sum(first * second, axis=1), -1, 1)))))
    # the correction is linear in the output, which is linear in ‖v‖
    assert angles[0] > 1e-3
    for big, small in zip(angles, angles[1:]):
        assert small == pytest.approx(big / 10, rel=0.05)


def test_second_order_target_matches_exact_error_vector_to_third_order():
    """With v̂ on its limit line, the exact e_i (softmax residuals) and its first-order-in-output
    form differ by O(u³) (σ(u) = ½ + u/4 − u³/48 + …): shrinking the outputs tenfold shrinks the
    angle to the zeroth-order target tenfold and to the second-order target a thousandfold."""
    data = gaussian_data(60, 5, seed=4, shift=0.0)

    def worst_angles(v_scale):
        params = aligned_params(data, v_scale=v_scale)
        e = jax.jit(error_vectors)(params, data)
        e_hat = e / safe_norm(e)[:, None]

        def worst(targets):
            return float(jnp.max(jnp.arccos(jnp.clip(jnp.sum(targets * e_hat, axis=1), -1, 1))))

        u = logits(params, data.x)
        return (
            float(jnp.max(jnp.abs(u[:, 0] - u[:, 1]))),
            worst(jax.jit(current_targets)(params, data)),
            worst(jax.jit(second_order_targets)(params, data)),
        )

    u_big, first_big, second_big = worst_angles(1e-2)
    u_small, first_small, second_small = worst_angles(1e-3)
    assert 0.05 < u_big < 0.5
    assert second_big < 0.01 * first_big
    assert first_big / first_small == pytest.approx(10.0, rel=0.1)
    assert second_big / second_small == pytest.approx(1000.0, rel=0.2)


def test_steady_second_order_target_solves_its_fixed_point_equation():
    """ŵ unit with (μ I + (Λ/2) C_E) ŵ = κS for a μ > 0 (Appendix C.3, docs/theory.md §3)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 6))  # |E| < D, as on images: S has a part outside C_E's range
    S = rng.standard_normal(6)
    for lam in (0.1, 1.0, 10.0, 1e3):
        w = steady_second_order_target(S, x, lam)
        assert np.linalg.norm(w) == pytest.approx(1.0, rel=1e-12)
        m = S - 0.5 * lam * (x.T @ x) @ w  # = μ ŵ
        mu = float(m @ w)
        assert mu > 0
        np.testing.assert_allclose(m, mu * w, atol=1e-10 * np.linalg.norm(S))
    # Λ → 0: the zeroth-order target; and a continuous approach to it
    np.testing.assert_allclose(steady_second_order_target(S, x, 0.0), S / np.linalg.norm(S))
    w_small = steady_second_order_target(S, x, 1e-8)
    assert np.arccos(min(1.0, w_small @ S / np.linalg.norm(S))) < 1e-6
    # no μ > 0 gives a unit vector when ‖(Λ/2 C)⁻¹ S‖ < 1 and S lies in C's range
    assert np.all(np.isnan(steady_second_order_target(np.array([1.0, 0.0]), np.eye(2), 10.0)))


def test_steady_second_order_targets_per_group_and_dead_neurons():
    data = gaussian_data(30, 4, seed=6, shift=0.0)
    params = aligned_params(data, width=5, v_scale=1e-2)
    params = params._replace(W=params.W.at[4].set(-1e3 * jnp.ones(4)))  # far outside: may be dead
    targets = steady_second_order_targets(params, data)
    gates = np.asarray(params.W @ data.x.T > 0)
    for i in range(5):
        if not gates[i].any():
            assert np.all(np.isnan(targets[i]))
            continue
        e_mask = gates[i]
        k = 1 if i % 2 == 0 else -1
        S = k * (np.asarray(data.signed_labels)[e_mask] @ np.asarray(data.x)[e_mask])
        P = np.linalg.norm(np.asarray(params.W), axis=1) * np.linalg.norm(
            np.asarray(params.V), axis=1
        )
        same = [j for j in range(5) if (j % 2 == i % 2) and np.array_equal(gates[j], e_mask)]
        lam = math.sqrt(2.0) * P[same].sum()
        np.testing.assert_allclose(
            targets[i], steady_second_order_target(S, np.asarray(data.x)[e_mask], lam), atol=1e-12
        )


def test_iterate_target_map_reaches_the_closed_form_stable_cells():
    per, eps = 5, 0.05
    n = 4 * per
    cluster = np.repeat(np.arange(4), per)
    x = np.zeros((n, 4 + n))
    x[np.arange(n), cluster] = 1.0
    x[np.arange(n), 4 + np.arange(n)] = eps
    data = training_data(
        Dataset(x, (cluster >= 2).astype(int), name="orth", provenance="test"), jnp.float64
    )
    rng = np.random.default_rng(0)
    start = rng.random((12, n)) < 0.5
    kappa = np.where(np.arange(12) < 6, 1, -1)
    found = iterate_target_map(jnp.asarray(start), jnp.asarray(kappa), data)
    assert np.all(np.asarray(found.fixed)) and not np.any(np.asarray(found.two_cycle))
    final = np.asarray(found.patterns)
    for i in range(12):
        own = (0, 1) if kappa[i] == 1 else (2, 3)
        touched = [k for k in own if start[i][cluster == k].any()]
        np.testing.assert_array_equal(final[i], np.isin(cluster, touched))


# --------------------------------------------------------------------------- Lemma 3.9, dP/dt


def test_lemma_3_9_and_dP_identity_exact_in_float64():
    data = gaussian_data()
    params = random_params()
    ident = jax.jit(speed_identities)(params, data)
    scale = np.asarray(ident.speed_scale)
    for measured, predicted in (ident.norm_speed, ident.angular_speed):
        np.testing.assert_allclose(
            np.asarray(measured), np.asarray(predicted), rtol=0, atol=1e-13 * scale.max()
        )
    np.testing.assert_allclose(*(np.asarray(a) for a in ident.ratio), rtol=1e-10)
    np.testing.assert_allclose(
        *(np.asarray(a) for a in ident.dP), rtol=0, atol=1e-13 * float(jnp.max(ident.dP_scale))
    )
    # the ratio is tan δ / ‖w‖ with δ = ∠(w, e)
    e = jax.jit(error_vectors)(params, data)
    cos = jnp.sum(e * params.W, axis=1) / (safe_norm(e) * safe_norm(params.W))
    np.testing.assert_allclose(
        np.asarray(ident.ratio[1]),
        np.asarray(jnp.tan(jnp.arccos(cos)) / safe_norm(params.W)),
        rtol=1e-7,
    )


def test_outgoing_half_of_lemma_3_9_exact_in_float64():
    """v̇_i = A_i (1, −1)/√2: its norm speed is θ_i·ẽ_i (eq. 2.1) and its angular speed
    (|A_i|/‖v_i‖)|sin(φ_i + π/4)|, against autodiff's field and an independent loop over samples."""
    data = gaussian_data()
    params = random_params()
    ident = jax.jit(speed_identities)(params, data)
    scale = float(jnp.max(ident.v_scale))
    for measured, predicted in (ident.v_norm_speed, ident.v_angular_speed):
        np.testing.assert_allclose(
            np.asarray(measured), np.asarray(predicted), rtol=0, atol=1e-13 * scale
        )
    f = jax.jit(vector_field)(0.0, params, data)
    # every residual is parallel to (1, −1), so is v̇_i
    np.testing.assert_allclose(np.asarray(f.V[:, 0] + f.V[:, 1]), 0.0, atol=1e-14 * scale)
    # θ_i·ẽ_i by a loop over samples, with β_i from its own definition
    x, y = np.asarray(data.x), np.asarray(data.y)
    W, b, V = (np.asarray(a) for a in params)
    o = np.maximum(x @ W.T + b, 0.0) @ V
    p = np.exp(o - o.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    r = p - np.eye(2)[y]
    beta = np.asarray(jax.jit(bias_error)(params, data))
    for i in range(W.shape[0]):
        v_hat = V[i] / np.linalg.norm(V[i])
        gate = (x @ W[i] + b[i]) > 0
        e_i = -sum(gate[s] * (v_hat @ r[s]) * x[s] for s in range(x.shape[0])) / x.shape[0]
        beta_i = -sum(gate[s] * (v_hat @ r[s]) for s in range(x.shape[0])) / x.shape[0]
        assert beta[i] == pytest.approx(beta_i, rel=1e-12, abs=1e-15)
        assert float(ident.v_norm_speed[1][i]) == pytest.approx(
            W[i] @ e_i + b[i] * beta_i, rel=1e-10, abs=1e-14 * scale
        )


def test_augmented_rate_is_the_exact_log_derivative_of_P():
    data = gaussian_data()
    params = random_params()

    def log_p_tilde(p):
        return jnp.log(safe_norm(jnp.concatenate([p.W, p.b[:, None]], axis=1)) * safe_norm(p.V))

    def log_p(p):
        return jnp.log(safe_norm(p.W) * safe_norm(p.V))

    field = jax.jit(vector_field)
    f = field(0.0, params, data)
    _, d_tilde = jax.jit(lambda p, v: jax.jvp(log_p_tilde, (p,), (v,)))(params, f)
    rates = jax.jit(unlocking_rates)(params, data)
    np.testing.assert_allclose(np.asarray(rates.augmented_exact), np.asarray(d_tilde), rtol=1e-10)
    # with b = 0 the docs/theory.md §4 form √(4P² + Q²)‖e‖cos δ/P is exact, and the augmented
    # one equals it
    zero_b = params._replace(b=jnp.zeros_like(params.b))
    _, d_plain = jax.jit(lambda p, v: jax.jvp(log_p, (p,), (v,)))(zero_b, field(0.0, zero_b, data))
    r0 = jax.jit(unlocking_rates)(zero_b, data)
    np.testing.assert_allclose(np.asarray(r0.q_form), np.asarray(d_plain), rtol=1e-10)
    # and with b != 0 it is not (the bias term ‖w‖ b β is missing)
    _, d_biased = jax.jit(lambda p, v: jax.jvp(log_p, (p,), (v,)))(params, f)
    assert np.max(np.abs(np.asarray(rates.q_form) - np.asarray(d_biased))) > 1e-6


def test_with_bias_input_turns_bias_into_a_weight():
    data = gaussian_data()
    params = random_params()
    aug = with_bias_input(data)
    w_tilde = jnp.concatenate([params.W, params.b[:, None]], axis=1)
    lifted = Params(W=w_tilde, b=jnp.zeros_like(params.b), V=params.V)
    np.testing.assert_allclose(
        np.asarray(logits(lifted, aug.x)), np.asarray(logits(params, data.x)), rtol=1e-12
    )


# --------------------------------------------------------------------------- helpers on records


def test_log_growth_slope_and_window_mean_are_exact_on_closed_forms():
    t = np.linspace(0.0, 10.0, 101)
    rates = np.array([0.3, 1.1, -0.2])
    P = 1e-8 * np.exp(np.outer(t, rates))
    np.testing.assert_allclose(log_growth_slope(t, P, 2.0, 7.0), rates, rtol=1e-12)
    linear = np.stack([2.0 * t + 1.0, -t], axis=1)
    np.testing.assert_allclose(
        window_mean(t, linear, 2.0, 6.0), [2.0 * 4.0 + 1.0, -4.0], rtol=1e-12
    )
    with pytest.raises(ValueError, match="window"):
        log_growth_slope(t, P, 2.01, 2.05)


def test_neuron_groups_and_phases():
    kappa = np.array([1, 1, -1, -1, 1, 1], np.int8)
    hashes = np.array([5, 5, 5, 5, 9, 5], np.uint32)
    groups = neuron_groups(kappa, hashes)
    assert [g.tolist() for g in groups] == [[0, 1, 5], [2, 3]]
    assert len(neuron_groups(kappa, hashes, min_size=1)) == 3
    active = np.array([3, 3, 0, 0, 3, 0])  # dead neurons have no cell target and are left out
    assert [g.tolist() for g in neuron_groups(kappa, hashes, active=active)] == [[0, 1]]

    class Obs:  # a record of 2 neurons in one group
        pass

    t = np.linspace(0.0, 10.0, 11)
    obs = Obs()
    obs.cos_target = np.stack([np.minimum(1.0, 0.5 + 0.1 * t)] * 2, axis=1)  # reaches 0.99 at t = 5
    obs.P = np.stack([1e-6 * np.exp(t)] * 2, axis=1)
    obs.kappa = np.ones((11, 2), np.int8)
    obs.loss = np.where(t < 8, 0.7, 0.1)  # drops at t = 8
    (phase,) = group_phases(t, obs, [np.array([0, 1])], onset_fraction=np.exp(-3.0))
    assert phase.loss_drop == 8.0 and phase.alignment_done == 5.0
    assert phase.unlocking_onset == 5.0  # Σ P reaches e^-3 of its t = 8 value at t = 5


def test_race_predictions_use_the_rest_of_the_group_and_can_fail():
    """2ŵ_i·ē_{G∖i}: exact when the members share one error vector; wrong groups give wrong
    rates (the check is falsifiable)."""
    rng = np.random.default_rng(7)
    K, D = 4, 5
    e_groups = rng.standard_normal((K, 2, D))  # two groups' error vectors over 4 snapshots
    member_of = np.array([0, 0, 0, 1, 1])
    e = e_groups[:, member_of]  # every member carries its group's e
    W = rng.standard_normal((K, 5, D))
    groups = [np.array([0, 1, 2]), np.array([3, 4])]
    pred = race_predictions(W, e, groups)
    w_hat = W / np.linalg.norm(W, axis=-1, keepdims=True)
    exact = 2.0 * np.sum(w_hat * e, axis=-1)
    np.testing.assert_allclose(pred, exact, rtol=1e-12)
    wrong = race_predictions(W, e, [np.array([0, 3, 1]), np.array([2, 4])])
    assert np.max(np.abs(wrong - exact)) > 0.1 * np.max(np.abs(exact))
    # a neuron is never predicted from itself: moving its own e changes its prediction not at all
    e2 = e.copy()
    e2[:, 0] += 10.0
    np.testing.assert_allclose(race_predictions(W, e2, groups)[:, 0], pred[:, 0], rtol=1e-12)
    assert np.all(np.isnan(race_predictions(W, e, [np.array([0])])))


def test_spearman_permutation_test_exact_and_sampled():
    a = np.arange(5.0)
    rho, p = spearman_permutation_test(a, -a)
    assert rho == pytest.approx(-1.0) and p == pytest.approx(1 / 120)
    rho, p = spearman_permutation_test(a, a)
    assert rho == pytest.approx(1.0) and p == pytest.approx(1.0)
    b = np.arange(12.0)
    rho, p = spearman_permutation_test(b, -(b**3))  # 12! pairings: sampled, p ≈ 1/12!
    assert rho == pytest.approx(-1.0) and p <= 1e-3
    assert math.isnan(spearman_permutation_test(a, np.ones(5))[1])
    assert math.isnan(spearman_permutation_test(a[:2], a[:2])[1])


def test_check_verdicts_and_settings_validation():
    assert make_check("x", 1.0, 1.05, 0.05, 0.1, "").passed
    assert make_check("x", 1.0, 1.0, 0.0, 0.1, "").kind == "claim"
    assert make_check("x", 1.0, 1.0, 0.0, 0.1, "", "identity").as_dict()["kind"] == "identity"
    with pytest.raises(ValueError, match="kind"):
        make_check("x", 1.0, 1.0, 0.0, 0.1, "", "lemma")
    assert not make_check("x", 1.0, 1.2, 0.2, 0.1, "").passed
    assert not make_check("x", float("nan"), float("nan"), float("nan"), 0.1, "").passed
    with pytest.raises(ValueError, match="rate_window"):
        CheckSettings(rate_window=(0.7, 0.5))
    with pytest.raises(ValueError, match="drift_tolerance"):
        CheckSettings(drift_tolerance=-1.0)


def test_loss_drop_estimate_rejects_bad_sigma():
    with pytest.raises(ValueError, match="sigma"):
        loss_drop_estimate(gaussian_data(), 0.0)


# --------------------------------------------------------------------------- against the ODE


@pytest.fixture(scope="module")
def mixture_run():
    """docs/theory.md §4 reference problem: 20-dim, 120-sample Gaussian mixture, d = 16, σ = 1e-5, "
    "float64."""
    dataset = gaussian_clusters(n_samples=120, dim=20, seed=0)
    data = training_data(dataset, jnp.float64)
    params0 = init_params(jax.random.key(0), 16, 20, 1e-5, dtype=jnp.float64)
    t_end = 1.25 * loss_drop_estimate(data, 1e-5)
    traj = gradient_flow(
        params0,
        data,
        np.linspace(0.0, t_end, 301),
        snapshot_times=np.linspace(0.0, t_end, 121),
        # gflow validate's default solver and step budget (one compilation with its CLI test)
        config=FlowConfig(solver="sliding", adaptive=False, dt0=0.25, max_steps=2_000_000),
    )
    checks, report = validate_trajectory(jax.tree.map(np.asarray, traj), data)
    return {c.name: c for c in checks}, report


def test_unlocking_rate_prediction_against_float64_ode(mixture_run):
    checks, report = mixture_run
    rate = checks["phase2.unlocking_rate"]
    # docs/theory.md §4 note: about 9% median relative error for the small-init rate on this problem
    assert rate.passed and rate.rel_error <= 0.10
    assert report["phase2"]["aligned_neurons"] >= 8
    # counting the bias as a weight (inputs (x, 1)) removes most of that error
    assert report["phase2"]["median_rel_error_augmented_small_init"] < 0.5 * rate.rel_error
    # the exact identity, averaged by the trapezoid rule, matches the secant slope of log P̃
    assert checks["phase2.rate_identity"].rel_error < 1e-3


IDENTITIES = {
    "balance_drift",
    "lemma_3_9",
    "lemma_3_9_v",
    "dP_identity",
    "phase2.rate_identity",
}
CLAIMS = {
    "phase1.limit_angle",
    "phase1.stable_cell",
    "phase1.stable_face",
    "phase1.directional_convergence",
    "phase1.second_order_target",
    "phase2.unlocking_rate",
    "phase3.race_rate",
    "phase3.lateral_inhibition",
    "phases.silent_alignment",
}


def test_identities_hold_on_the_default_solver(mixture_run):
    """Every identity holds on gflow validate's default solver, at its own tolerance."""
    checks, report = mixture_run
    assert set(checks) == IDENTITIES | CLAIMS
    for name in IDENTITIES:
        assert checks[name].kind == "identity" and checks[name].passed, checks[name]
    for name in CLAIMS:
        assert checks[name].kind == "claim"
    assert checks["balance_drift"].rel_error <= CheckSettings().drift_tolerance
    # Lemma 3.9: at initialisation the angular speed dwarfs the norm speed (silent alignment)
    assert checks["lemma_3_9"].measured > 100
    for c in checks.values():
        assert c.passed == (math.isfinite(c.rel_error) and c.rel_error <= c.tolerance)


def test_race_law_with_the_bias_as_a_weight(mixture_run):
    """Conjecture 3.12 for θ_i = (w_i, b_i): members of a group share ẽ_G exactly (docs/theory.md
    §2), so predicting each member's rate from the others must hold within the claim's tolerance;
    the b = 0 form misses the bias term ‖w_i‖ b_i β_i/P_i and cannot do better."""
    checks, report = mixture_run
    race = checks["phase3.race_rate"]
    assert report["phase3"]["groups"] >= 1
    assert report["phase3"]["median_error_with_bias_as_weight"] <= race.tolerance
    assert report["phase3"]["median_error_with_bias_as_weight"] <= race.rel_error
    inhibition = report["phase3"]["lateral_inhibition"]
    assert len(inhibition["log_epsilon_change"]) == inhibition["groups"] >= 1


# The docs/theory.md §4 reference mixture at the sizes tests/test_theory.py simulates
# (compilations are shared).
TINY = [
    "--dataset",
    "clusters",
    "--n-per-class",
    "60",
    "--width",
    "16",
    "--rtol",
    "1e-4",
    "--records",
    "301",
    "--snapshots",
    "121",
    "--horizon-factor",
    "1.25",
]
CHECK_KEYS = {"name", "kind", "predicted", "measured", "rel_error", "tolerance", "passed"}


def test_validate_writes_the_check_schema_and_exit_status_follows_verdicts(tmp_path, capsys):
    """`gflow validate` on the mixture_run problem (its compilation is shared in this file):
    the JSON schema, identities apart from claims, and an exit status that follows the verdicts."""
    out = tmp_path / "checks.json"
    rc = main(["validate", *TINY, "--probes", "300", "--probe-seeds", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    payload = json.loads(out.read_text())
    checks = payload["checks"]
    assert len(checks) >= 13
    for c in checks:
        assert CHECK_KEYS <= set(c)
        assert c["kind"] in ("identity", "claim")
        assert isinstance(c["name"], str) and isinstance(c["passed"], bool)
        for key in ("predicted", "measured", "rel_error", "tolerance"):
            assert c[key] is None or math.isfinite(c[key])
        expected = c["rel_error"] is not None and c["rel_error"] <= c["tolerance"]
        assert c["passed"] == expected, c
    assert rc == (0 if all(c["passed"] for c in checks) else 1)
    kinds = {c["name"]: c["kind"] for c in checks}
    for name in (
        "balance_drift",
        "lemma_3_9",
        "lemma_3_9_v",
        "dP_identity",
        "phase2.rate_identity",
    ):
        assert kinds[name] == "identity"
    for name in (
        "phase1.limit_angle",
        "phase1.directional_convergence",
        "phase2.unlocking_rate",
        "phase3.race_rate",
        "phase3.lateral_inhibition",
    ):
        assert kinds[name] == "claim"
    # the default solver keeps the balance to rounding: every identity passes at its tolerance
    assert all(c["passed"] for c in checks if c["kind"] == "identity")
    # the table shows identities and claims as two groups, identities first
    head_id = printed.index("identities (exact")
    head_claim = printed.index("claims (the paper")
    assert head_id < printed.index("lemma_3_9_v") < head_claim < printed.index("phase3.race_rate")
    for name in kinds:
        assert name in printed
    cells = payload["stable_cells"]
    assert len(cells["kappa+1"]["estimates"]) == 2 and cells["kappa+1"]["spread"] >= 0
    assert payload["settings"]["dtype"] == "float64"


def test_validation_report_quick_mode_on_a_real_run(tmp_path):
    """scripts/validation_report.py --quick runs gflow validate on TINY's problem (the
    compilation of mixture_run, shared in this file) and its page shows those verdicts."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "validation_report.py"
    spec = importlib.util.spec_from_file_location("validation_report", script)
    assert spec is not None and spec.loader is not None
    report_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report_module)
    out = tmp_path / "page.md"
    summary = tmp_path / "grid.json"
    rc = report_module.main(["--quick", "--out", str(out), "--json", str(summary)])
    assert rc == 0
    text = out.read_text()
    grid = json.loads(summary.read_text())
    for name, entry in grid["checks"].items():
        got = entry["cells"]["0"]
        mark = "pass" if got["passed"] == got["runs"] else "FAIL"
        assert f"| `{name}` | {entry['kind']} | {mark} {got['passed']}/1 |" in text
        assert entry["kind"] in ("identity", "claim")
    assert "phase3.race_rate" in grid["checks"] and "lemma_3_9_v" in grid["checks"]
    assert report_module.main(["--quick", "--out", str(tmp_path / "missing" / "x.md")]) == 2


@pytest.mark.parametrize(
    "verdicts, status",
    [
        ((("identity", True), ("claim", True)), 0),
        ((("identity", True), ("claim", False)), 1),
        ((("identity", False), ("claim", True)), 1),
    ],
)
def test_validate_exit_status(monkeypatch, capsys, verdicts, status):
    def fake_checks(traj, data, *, settings):
        return [
            Check(f"check{i}", 1.0, 1.0, 0.0 if ok else 2.0, 1.0, ok, "", kind)
            for i, (kind, ok) in enumerate(verdicts)
        ], {}

    monkeypatch.setattr(gflow.theory, "validate_trajectory", fake_checks)
    assert main(["validate", *TINY, "--probe-seeds", "0", "--quiet"]) == status
    printed = capsys.readouterr().out
    assert ("FAIL" in printed) == (status == 1)

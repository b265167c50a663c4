"""Effective capacity (docs/theory.md §6): clusters, merging and its bound, norm pruning."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow.capacity import (
    augmented_weights,
    compact,
    dense_mask,
    merge_logit_bound,
    merge_neurons,
    merge_report,
    merged_network,
    neuron_clusters,
    norm_pruning_curve,
    norm_pruning_mask,
    prune_neurons,
    train_masked,
)

F64 = jnp.float64


def _data(seed=0, n=40, dim=6):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    y = (rng.random(n) < 0.5).astype(int)
    y[:2] = [0, 1]
    xt = rng.normal(size=(15, dim))
    yt = (rng.random(15) < 0.5).astype(int)
    return gflow.training_data(
        gflow.Dataset(x, y, name="rand", provenance="normal draws", x_test=xt, y_test=yt), F64
    )


def _clustered_params(seed=0, groups=5, width=24, dim=6, spread=0.15):
    """Neurons scattered around a few augmented directions, random norms and outgoing weights."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim + 1))
    members = rng.integers(0, groups, size=width)
    aug = centres[members] + spread * rng.normal(size=(width, dim + 1))
    aug *= rng.uniform(0.2, 3.0, size=(width, 1))
    V = rng.normal(size=(width, 2))
    return gflow.Params(
        W=jnp.asarray(aug[:, :-1], F64), b=jnp.asarray(aug[:, -1], F64), V=jnp.asarray(V, F64)
    )


def _partition(labels):
    return frozenset(frozenset(np.nonzero(labels == c)[0].tolist()) for c in np.unique(labels))


def _cosines(params):
    a = np.asarray(augmented_weights(params))
    u = a / np.linalg.norm(a, axis=1, keepdims=True)
    return u @ u.T


# --------------------------------------------------------------------------- clustering


def _reference_complete_linkage(params, tau):
    """Slow reference: cluster distance recomputed from member pairs at every merge (no
    Lance–Williams update), neurons visited in the canonical (value) order."""
    cos = _cosines(params)
    kappa = np.asarray(gflow.network.outgoing_alignment(params.V))
    order = np.lexsort(
        np.concatenate([np.asarray(augmented_weights(params)), np.asarray(params.V)], 1).T[::-1]
    )
    clusters = [[int(i)] for i in order]
    while True:
        best, pair = -np.inf, None
        for a, b in itertools.combinations(range(len(clusters)), 2):
            if kappa[clusters[a][0]] != kappa[clusters[b][0]]:
                continue
            s = min(cos[i, j] for i in clusters[a] for j in clusters[b])
            if s > best:
                best, pair = s, (a, b)
        if pair is None or best < tau:
            break
        a, b = pair
        clusters[a] = clusters[a] + clusters[b]
        del clusters[b]
    return frozenset(frozenset(c) for c in clusters)


@pytest.mark.parametrize("tau", [0.9, 0.97])
def test_complete_linkage_matches_a_slow_reference_and_every_pair_reaches_tau(tau):
    params = _clustered_params(seed=1, width=18)
    c = neuron_clusters(params, threshold=tau)
    assert _partition(c.labels) == _reference_complete_linkage(params, tau)
    cos = _cosines(params)
    for members in _partition(c.labels):
        m = sorted(members)
        assert np.all(cos[np.ix_(m, m)] >= tau - 1e-12)
        assert len(set(c.kappa[m].tolist())) == 1  # never across alignments
    assert c.count == len(_partition(c.labels)) and c.sizes().sum() == 18


def test_complete_linkage_does_not_chain():
    # Three unit directions 0°, 15°, 30° apart: neighbours at cos 0.966 >= 0.95, ends at cos 0.866.
    # Connected components of "cos >= τ" would give one cluster; complete linkage must not.
    ang = np.deg2rad([0.0, 15.0, 30.0])
    W = np.stack([np.cos(ang), np.sin(ang)], 1)
    params = gflow.Params(
        W=jnp.asarray(W, F64), b=jnp.zeros(3, F64), V=jnp.asarray([[1.0, 0.0]] * 3, F64)
    )
    c = neuron_clusters(params, threshold=0.95)
    assert c.count == 2
    assert _partition(c.labels) in (
        {frozenset({0, 1}), frozenset({2})},
        {frozenset({0}), frozenset({1, 2})},
    )


def test_clustering_is_deterministic_and_invariant_to_neuron_order():
    params = _clustered_params(seed=2, width=30, spread=0.25)
    c = neuron_clusters(params, threshold=0.93)
    assert np.array_equal(c.labels, neuron_clusters(params, threshold=0.93).labels)
    # Labels are numbered by each cluster's smallest index.
    firsts = [int(np.nonzero(c.labels == k)[0][0]) for k in range(c.count)]
    assert firsts == sorted(firsts)
    rng = np.random.default_rng(0)
    for _ in range(4):
        perm = rng.permutation(30)
        permuted = jax.tree.map(lambda a: a[perm], params)
        cp = neuron_clusters(permuted, threshold=0.93)
        back = np.empty_like(cp.labels)
        back[perm] = cp.labels  # neuron perm[i] of the original sits at position i
        assert _partition(back) == _partition(c.labels)


def test_opposite_alignments_never_share_a_cluster_and_zero_neurons_are_singletons():
    W = jnp.asarray([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], F64)
    V = jnp.asarray([[1.0, -1.0], [2.0, -1.0], [-1.0, 1.0], [1.0, -1.0]], F64)
    c = neuron_clusters(gflow.Params(W=W, b=jnp.zeros(4, F64), V=V), threshold=0.99)
    assert _partition(c.labels) == {frozenset({0, 1}), frozenset({2}), frozenset({3})}


def test_threshold_is_validated():
    with pytest.raises(ValueError, match="threshold"):
        neuron_clusters(_clustered_params(), threshold=1.5)


# --------------------------------------------------------------------------- merging


def test_merging_identical_directions_is_exact():
    # Positive homogeneity: v relu(c w̃·x̃) = c v relu(w̃·x̃); merging neurons on one ray is exact.
    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(4, 7))
    scales = rng.uniform(0.1, 5.0, size=12)
    aug = dirs[np.arange(12) % 4] * scales[:, None]
    params = gflow.Params(
        W=jnp.asarray(aug[:, :-1], F64),
        b=jnp.asarray(aug[:, -1], F64),
        V=jnp.asarray(rng.normal(size=(12, 2)), F64),
    )
    # Keep κ equal within each ray so that each ray is one cluster.
    V = np.array(params.V)
    V[:, 0] = np.where(np.arange(12) % 4 < 2, np.abs(V[:, 1]) + 0.5, -np.abs(V[:, 1]) - 0.5)
    params = params._replace(V=jnp.asarray(V))
    c = neuron_clusters(params, threshold=0.999)
    assert c.count == 4
    x = jnp.asarray(rng.normal(size=(50, 6)), F64)
    o = gflow.logits(params, x)
    for rebalance, weighting in itertools.product((False, True), ("norm", "contribution")):
        merged = merged_network(params, c, rebalance=rebalance, weighting=weighting)
        assert merged.W.shape == (4, 6)
        om = gflow.logits(merged, x)
        assert float(jnp.max(jnp.abs(om - o)) / jnp.max(jnp.abs(o))) <= 1e-6
    rebalanced = merged_network(params, c, rebalance=True)
    np.testing.assert_allclose(
        np.linalg.norm(augmented_weights(rebalanced), axis=1),
        np.linalg.norm(rebalanced.V, axis=1),
        rtol=1e-12,
    )
    assert float(jnp.max(merge_logit_bound(params, jnp.asarray(c.labels), x))) <= 1e-9 * float(
        jnp.max(jnp.abs(o))
    )


@pytest.mark.parametrize(
    "seed,tau,weighting",
    [(0, 0.8, "norm"), (1, 0.9, "contribution"), (4, 0.95, "norm"), (5, 0.99, "contribution")],
)
def test_logit_bound_holds_on_random_networks(seed, tau, weighting):
    params = _clustered_params(seed=seed, width=30, spread=0.3)
    labels = jnp.asarray(neuron_clusters(params, threshold=tau).labels)
    x = jnp.asarray(np.random.default_rng(seed).normal(size=(200, 6)) * 2.0, F64)
    merged = merge_neurons(params, labels, weighting=weighting)
    change = jnp.linalg.norm(gflow.logits(merged, x) - gflow.logits(params, x), axis=1)
    tight = merge_logit_bound(params, labels, x, weighting=weighting)
    loose = merge_logit_bound(params, labels, x, per_sample_direction=False, weighting=weighting)
    assert bool(jnp.all(change <= tight + 1e-12))
    assert bool(jnp.all(tight <= loose + 1e-12))
    # Complete linkage keeps every member within √(2(1−τ)) of its merged direction, so the loose
    # bound is at most √(2(1−τ)) ‖x̃‖ Σ ‖w̃_j‖‖v_j‖.
    xt = jnp.concatenate([x, jnp.ones((200, 1), F64)], 1)
    radius = (
        np.sqrt(2 * (1 - tau))
        * jnp.linalg.norm(xt, axis=1)
        * jnp.sum(
            jnp.linalg.norm(augmented_weights(params), axis=1) * jnp.linalg.norm(params.V, axis=1)
        )
    )
    assert bool(jnp.all(loose <= radius + 1e-9))
    assert float(jnp.max(change)) > 0  # the check is not vacuous: merging did change the outputs


def test_contribution_weighting_cancels_the_first_order_error():
    # One cluster of neurons at angle ~ε around a direction, outgoing weights parallel. Where every
    # member's gate agrees, relu is linear on the cluster: the contribution merge is then exact,
    # while the norm merge errs by O(ε) (docs/theory.md §6).
    rng = np.random.default_rng(8)
    centre = rng.normal(size=6)
    offsets = rng.normal(size=(5, 6))
    scales = rng.uniform(0.5, 2.0, size=5)
    V = np.outer(rng.uniform(0.2, 3.0, size=5), [1.0, -1.0])  # parallel, κ = +1
    x = jnp.asarray(rng.normal(size=(400, 5)), F64)
    labels = jnp.zeros(5, jnp.int32)

    def error(eps, weighting):
        aug = (centre[None, :] + eps * offsets) * scales[:, None]
        p = gflow.Params(
            W=jnp.asarray(aug[:, :-1], F64), b=jnp.asarray(aug[:, -1], F64), V=jnp.asarray(V, F64)
        )
        merged = merge_neurons(p, labels, weighting=weighting)
        z = (
            np.asarray(augmented_weights(p))
            @ np.concatenate([np.asarray(x), np.ones((400, 1))], 1).T
        )
        smooth = np.all(z > 0, axis=0) | np.all(z < 0, axis=0)
        assert smooth.mean() > 0.9
        diff = jnp.linalg.norm(gflow.logits(merged, x) - gflow.logits(p, x), axis=1)
        return float(jnp.max(diff[smooth])), float(jnp.max(jnp.abs(gflow.logits(p, x))))

    (e1, scale), (e2, _) = error(1e-3, "norm"), error(2e-3, "norm")
    assert e1 / e2 == pytest.approx(0.5, rel=0.05) and e1 > 1e-6 * scale
    for eps in (1e-3, 1e-2, 1e-1):
        e, scale = error(eps, "contribution")
        assert e <= 1e-12 * scale


def test_masked_merge_under_jit_equals_compact_network():
    params = _clustered_params(seed=6, width=20, spread=0.2)
    c = neuron_clusters(params, threshold=0.9)
    masked = jax.jit(merge_neurons)(params, jnp.asarray(c.labels))
    assert masked.W.shape == params.W.shape
    assert bool(jnp.all(masked.W[c.count :] == 0)) and bool(jnp.all(masked.V[c.count :] == 0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(30, 6)), F64)
    np.testing.assert_array_equal(
        gflow.logits(masked, x), gflow.logits(compact(masked, c.count), x)
    )


def test_merge_report_on_a_trained_network():
    data = _data()
    p0 = gflow.init_params(jax.random.key(0), 12, 6, 1e-3, dtype=F64)
    final = train_masked(
        p0, jax.random.key(1), data, dense_mask(p0), learning_rate=0.5, steps=400, batch_size=None
    )
    report = merge_report(final, data, threshold=0.95)
    assert report.bound_holds
    assert report.clusters < report.width  # small init: neurons align and merge
    assert report.max_angle_gap <= np.sqrt(2 * 0.05) + 1e-12
    assert report.max_logit_change <= report.max_bound
    assert abs(report.train_accuracy_merged - report.train_accuracy) <= 0.1


# --------------------------------------------------------------------------- norm pruning


def test_norm_pruning_removes_the_smallest_P_exactly():
    P = jnp.asarray([5.0, 1.0, 3.0, 1.0, 9.0, 0.5, 2.0, 7.0], F64)
    keep = norm_pruning_mask(P, fraction=0.5)
    assert np.asarray(keep).tolist() == [True, False, True, False, True, False, False, True]
    # Ties: the lower index goes first.
    assert np.asarray(norm_pruning_mask(P, fraction=0.25)).tolist() == [
        True,
        False,
        True,
        True,
        True,
        False,
        True,
        True,
    ]
    assert np.asarray(norm_pruning_mask(P, threshold=2.5)).tolist() == [
        True,
        False,
        True,
        False,
        True,
        False,
        False,
        True,
    ]
    assert int(jnp.sum(jax.jit(lambda f: norm_pruning_mask(P, fraction=f))(0.75))) == 2
    with pytest.raises(ValueError, match="exactly one"):
        norm_pruning_mask(P)
    with pytest.raises(ValueError, match="fraction"):
        norm_pruning_mask(P, fraction=1.5)


def test_pruned_network_equals_the_network_of_kept_neurons():
    params = _clustered_params(seed=7, width=16)
    data = _data()
    P = jnp.linalg.norm(params.W, axis=1) * jnp.linalg.norm(params.V, axis=1)
    keep = norm_pruning_mask(P, fraction=0.4)
    idx = np.nonzero(np.asarray(keep))[0]
    small = jax.tree.map(lambda a: a[idx], params)
    np.testing.assert_allclose(
        gflow.logits(prune_neurons(params, keep), data.x), gflow.logits(small, data.x), atol=1e-12
    )
    curve = norm_pruning_curve(params, data, [0.0, 0.4, 1.0])
    assert curve.neurons_kept.tolist() == [16, 10, 0]
    assert curve.train_accuracy[0] == pytest.approx(float(gflow.accuracy(params, data.x, data.y)))
    assert curve.train_accuracy[1] == pytest.approx(float(gflow.accuracy(small, data.x, data.y)))
    assert curve.train_accuracy[2] == 0.0  # zero logits: ties count as wrong


# --------------------------------------------------------------------------- command line


def test_gflow_capacity_reports_a_loaded_network(tmp_path, capsys):
    import json

    from gflow.cli import main

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 784))
    W = centres[np.arange(12) % 3] * rng.uniform(0.5, 2.0, size=(12, 1)) + 0.01 * rng.normal(
        size=(12, 784)
    )
    V = np.where((np.arange(12) % 3 == 0)[:, None], [[1.0, -1.0]], [[-1.0, 1.0]]) * rng.uniform(
        0.5, 2, (12, 1)
    )
    path = tmp_path / "net.npz"
    np.savez(path, W=W.astype(np.float32), b=np.zeros(12, np.float32), V=V.astype(np.float32))
    assert (
        main(
            [
                "capacity",
                "--params",
                str(path),
                "--n-per-class",
                "20",
                "--fractions",
                "0,0.5",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    merge = report["merge"]
    assert merge["width"] == 12 and merge["clusters"] == 3  # three rays, each with one κ
    assert merge["bound_holds"] and merge["max_logit_change"] <= merge["max_bound"]
    assert [r["neurons_kept"] for r in report["norm_pruning"]] == [12, 6]
    assert main(["capacity", "--params", str(path), "--n-per-class", "20", "--tau", "0.9"]) == 0
    assert "clusters     3 at tau = 0.9" in capsys.readouterr().out
    np.savez(tmp_path / "bad.npz", W=W)
    assert main(["capacity", "--params", str(tmp_path / "bad.npz"), "--n-per-class", "20"]) == 2
    assert "missing arrays" in capsys.readouterr().err


def test_gflow_capacity_on_one_run_of_a_sweep_folder(tmp_path, capsys):
    """`--run DIR --point P --seed S` analyses the final weights of that run, stored stacked as
    [point, seed, ...], on the run's own data: the same numbers as `merge_report` and
    `norm_pruning_curve` on `Run.params_of(P, S)`; a chunk's stacked npz, a missing seed or point
    are refused with one line naming what exists."""
    import json

    from gflow.capacity import capacity_report
    from gflow.cli import main
    from gflow.runs import load_run

    out = tmp_path / "sweep"
    sweep_args = ["sweep", "--dataset", "clusters", "--n-per-class", "16", "--width", "6"]
    sweep_args += ["--sigma", "0.01,0.1", "--lr", "0.1", "--momentum", "0.5", "--batch", "8"]
    sweep_args += ["--steps", "40", "--record-every", "20", "--seeds", "3,5", "--dtype", "float64"]
    assert main([*sweep_args, "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["capacity", "--run", str(out), "--point", "1", "--seed", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["from_run"]["point"] == 1 and report["from_run"]["seed"] == 5
    run = load_run(out)
    params = run.params_of(1, 5)
    np.testing.assert_array_equal(params.W, run.final_params.W[1, 1])
    data = gflow.training_data(gflow.load_dataset("clusters", n_samples=32, dim=20), F64)
    expected = capacity_report(
        gflow.Params(*(jnp.asarray(a, F64) for a in params)),
        data,
        tau=0.95,
        rebalance=False,
        fractions=[0, 0.25, 0.5, 0.75, 0.9, 0.95],
    )
    assert json.loads(json.dumps(expected)) == {k: report[k] for k in ("merge", "norm_pruning")}
    assert main(["capacity", "--run", str(out), "--point", "1", "--seed", "4"]) == 2
    assert "seed 4 is not in this run; its seeds are 3, 5" in capsys.readouterr().err
    assert main(["capacity", "--run", str(out), "--point", "2"]) == 2
    assert "point must be an index in [0, 2)" in capsys.readouterr().err
    chunk = out / "chunks" / "chunk-00000" / "params_final.npz"
    assert main(["capacity", "--params", str(chunk), "--dataset", "clusters"]) == 2
    assert "--run DIR --point P --seed S" in capsys.readouterr().err


def test_gflow_capacity_speaks_the_words_of_gflow_run():
    """--lr, --batch, --steps as `gflow run` says them; the old spellings still parse."""
    from gflow.cli import build_parser

    parse = build_parser().parse_args
    new = parse(["capacity", "--lr", "0.02", "--batch", "8", "--steps", "500"])
    old = parse(["capacity", "--learning-rate", "0.02", "--batch-size", "8", "--time", "50"])
    assert (new.lr, new.batch, new.steps, new.t_end) == (0.02, 8, 500, None)
    assert (old.lr, old.batch, old.steps, old.t_end) == (0.02, 8, None, 50.0)

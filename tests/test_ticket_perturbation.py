"""The critique's perturbation test of IMP tickets (scripts/ticket_perturbation.py) in --quick mode:
its files, and the mathematics behind its numbers — ε = 0 leaves the start and the run as they
were, each perturbation moves exactly its own set of weights, both sets are equally large, and the
reported shares are what the saved per-neuron numbers give."""

import csv
import importlib.util
import json
from collections import defaultdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow
from gflow.capacity import mann_whitney_auc
from gflow.network import Params

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
NAME = "ticket_perturbation"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load():
    spec = importlib.util.spec_from_file_location(NAME, SCRIPTS / f"{NAME}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load()


@pytest.fixture(scope="module")
def quick(script, tmp_path_factory):
    out = tmp_path_factory.mktemp(NAME)
    assert script.main(["--quick", "--out", str(out)]) == 0
    for suffix in (".png", ".json", ".csv"):
        path = out / f"{NAME}{suffix}"
        assert path.is_file() and path.stat().st_size > 0, path
    assert (out / f"{NAME}.png").read_bytes()[:8] == PNG_MAGIC
    record = json.loads((out / f"{NAME}.json").read_text())
    with (out / f"{NAME}.csv").open() as f:
        rows = list(csv.DictReader(f))
    return record, rows


def _mask(key, width, dim, sparsity):
    """A random mask of W and V with round(s·n) pruned weights; biases kept."""
    n = width * (dim + 2)
    pruned = np.zeros(n, bool)
    pruned[np.asarray(jax.random.permutation(key, n))[: round(sparsity * n)]] = True
    return Params(
        W=jnp.asarray(~pruned[: width * dim].reshape(width, dim)),
        b=jnp.ones(width, bool),
        V=jnp.asarray(~pruned[width * dim :].reshape(width, 2)),
    )


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.75])
def test_perturbation_moves_exactly_its_set(script, sparsity):
    width, dim, sigma = 6, 9, 1e-5
    p0 = gflow.init_params(jax.random.key(3), width, dim, sigma)
    mask = _mask(jax.random.key(4), width, dim, sparsity)
    noise, fresh = script.noise_draws(7, width, dim, sigma)
    sets = script.arm_sets(7, 0, mask)
    m = script.matched_size(mask)
    n_pruned = int((~mask.W).sum() + (~mask.V).sum())
    assert m == min(n_pruned, width * (dim + 2) - n_pruned)
    rest, ticket = sets["rest"], sets["ticket"]
    # Both sets have m weights; the rest set lies in the pruned weights, the ticket set in the
    # kept ones (so they are disjoint); no bias is ever selected.
    assert script.set_size(rest) == script.set_size(ticket) == m
    assert np.all(np.asarray(rest.W) <= ~np.asarray(mask.W))
    assert np.all(np.asarray(rest.V) <= ~np.asarray(mask.V))
    assert np.all(np.asarray(ticket.W) <= np.asarray(mask.W))
    assert np.all(np.asarray(ticket.V) <= np.asarray(mask.V))
    assert not np.any(np.asarray(rest.b)) and not np.any(np.asarray(ticket.b))
    if sparsity <= 0.5:  # the rest arm is the whole pruned set
        assert script.set_size(rest) == n_pruned
    for sel in (rest, ticket):
        # ε = 0: the start is θ_0, bit for bit.
        same = script.perturbed_start(p0, sel, noise, fresh, 0.0, False)
        for a, b in zip(same, p0):
            assert np.array_equal(np.asarray(a), np.asarray(b))
        for eps in (0.1, 1.0, 10.0):
            moved = script.perturbed_start(p0, sel, noise, fresh, eps, False)
            for a, b, s, z in zip(moved, p0, sel, noise):
                a, b, s, z = (np.asarray(v) for v in (a, b, s, z))
                assert np.array_equal(a[~s], b[~s])  # nothing outside the set moves
                np.testing.assert_allclose(a[s], b[s] + eps * z[s], rtol=1e-6)
                assert np.all(a[s] != b[s])  # every selected weight moves (|εσξ| ≫ ulp here)
        again = script.perturbed_start(p0, sel, noise, fresh, 0.0, True)
        for a, b, s, f in zip(again, p0, sel, fresh):
            a, b, s, f = (np.asarray(v) for v in (a, b, s, f))
            assert np.array_equal(a[~s], b[~s]) and np.array_equal(a[s], f[s])
    # The fresh draw is N(0, σ²) and independent of ξ and of θ_0.
    assert not np.array_equal(np.asarray(noise.W), np.asarray(fresh.W))
    assert not np.array_equal(np.asarray(noise.W), np.asarray(p0.W))


def test_random_subset_is_reproducible_and_uniform_size(script):
    eligible = _mask(jax.random.key(0), 5, 8, 0.4)
    a = script.random_subset(jax.random.key(1), eligible, 7)
    b = script.random_subset(jax.random.key(1), eligible, 7)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert script.set_size(a) == 7
    with pytest.raises(ValueError):
        script.random_subset(jax.random.key(1), eligible, script.set_size(eligible) + 1)


def test_files_and_checks(quick):
    record, rows = quick
    checks = record["checks"]
    assert all(checks.values()), checks
    for name in (
        "eps0_start_equals_init",
        "eps0_run_reproduces_dense_run",
        "perturbation_only_on_its_set",
        "perturbation_covers_its_set",
        "rest_set_pruned_ticket_set_kept",
        "sets_same_size",
        "rest_set_is_all_pruned_when_s_le_half",
        "biases_untouched",
        "all_runs_finite",
        "shares_in_unit_interval",
    ):
        assert checks[name], name
    # At these sizes the ε = 0 run is IMP's dense round exactly (same program, same kernels).
    assert record["eps0_run_vs_dense_run"]["max_relative_W_gap"] <= 1e-4
    assert record["eps0_run_vs_dense_run"]["min_spearman_P"] == pytest.approx(1.0)
    s = record["settings"]
    labels = [m["label"] for m in s["perturbations"]]
    assert labels[0] == "eps=0"
    per_seed = len(s["sparsities"]) * (1 + 2 * (len(labels) - 1))
    assert len(record["runs"]) == len(s["seeds"]) * per_seed
    assert len(rows) == len(record["runs"]) * s["width"]
    assert set(record["predictions"]) == {"race", "critique"}
    for cell in record["summary"]:
        if cell["perturbation"] != labels[0]:
            assert cell["reading"].split(":")[0] in {
                "race",
                "critique",
                "both",
                "neither distinguishes",
            }


def test_shares_agree_with_the_saved_per_neuron_numbers(quick):
    record, rows = quick
    runs = defaultdict(list)
    for r in rows:
        key = (int(r["seed"]), float(r["target_sparsity"]), r["arm"], r["perturbation"])
        runs[key].append(r)
    width = record["settings"]["width"]
    same_size = defaultdict(set)
    for run in record["runs"]:
        mine = runs[(run["seed"], run["target_sparsity"], run["arm"], run["perturbation"])]
        assert len(mine) == width
        P = np.array([float(r["P_final"]) for r in mine])
        ticket = np.array([r["ticket"] == "1" for r in mine])
        assert np.all(P >= 0)
        assert 0 <= run["ticket_share"] <= 1
        assert run["ticket_share"] == pytest.approx(P[ticket].sum() / P.sum(), rel=1e-5, abs=1e-6)
        assert run["chance_share"] == pytest.approx(ticket.mean())
        assert run["ticket_neurons"] == ticket.sum()
        auc = mann_whitney_auc(P, ticket)
        if np.isfinite(auc):
            assert run["auc_P_ticket"] == pytest.approx(auc, abs=1e-6)
        touched = sum(int(r["perturbed_weights"]) for r in mine)
        assert touched == run["perturbed_weights"]
        if run["arm"] == "none":
            assert touched == 0
        else:
            same_size[(run["seed"], run["target_sparsity"])].add(touched)
    # Within a (seed, sparsity), both arms and every perturbation touch the same number of weights.
    assert same_size and all(len(v) == 1 for v in same_size.values())


def test_unperturbed_rows_are_one_run(quick):
    """The ε = 0 rows of every sparsity are the same trained network: equal P_i per neuron."""
    _, rows = quick
    plain = defaultdict(dict)
    for r in rows:
        if r["arm"] == "none":
            plain[(r["seed"], r["neuron"])][r["target_sparsity"]] = r["P_final"]
    assert plain and all(len(set(v.values())) == 1 for v in plain.values())


def test_summary_is_the_seed_mean(quick):
    record, _ = quick
    for cell in record["summary"]:
        for arm in ("none", "rest", "ticket"):
            if arm not in cell:
                continue
            mine = [
                r["ticket_share"]
                for r in record["runs"]
                if r["target_sparsity"] == cell["target_sparsity"]
                and r["arm"] == arm
                and r["perturbation"] == cell["perturbation"]
            ]
            assert cell[arm]["ticket_share"]["mean"] == pytest.approx(np.mean(mine))
            assert cell[arm]["seeds"] == len(mine)

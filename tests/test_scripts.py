"""The paper's experiment scripts in --quick mode: they run, write their files, and their numbers
respect the invariants they report (merge bound, exact IMP sparsity, cluster counts).

The scripts run in this process (``main(argv)``), so runs with equal shapes share compilations.
"""

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from gflow.capacity import spearman

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(name, tmp_path_factory, *extra):
    out = tmp_path_factory.mktemp(name)
    assert _load(name).main(["--quick", "--out", str(out), *extra]) == 0
    for suffix in (".png", ".json", ".csv"):
        path = out / f"{name}{suffix}"
        assert path.is_file() and path.stat().st_size > 0, path
    assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    record = json.loads((out / f"{name}.json").read_text())
    with (out / f"{name}.csv").open() as f:
        rows = list(csv.DictReader(f))
    return out, record, rows


@pytest.fixture(scope="module")
def fig3a(tmp_path_factory):
    return _run("fig3a_clusters_vs_n", tmp_path_factory)


@pytest.fixture(scope="module")
def table_g(tmp_path_factory):
    return _run("table_g_merging", tmp_path_factory)


@pytest.fixture(scope="module")
def fig3b(tmp_path_factory):
    return _run("fig3b_clusters_over_time", tmp_path_factory)


@pytest.fixture(scope="module")
def fig4(tmp_path_factory):
    return _run("fig4_norm_vs_alignment", tmp_path_factory)


@pytest.fixture(scope="module")
def fig5(tmp_path_factory):
    return _run("fig5_imp_vs_alignment", tmp_path_factory)


def test_fig3a_clusters_vs_n(fig3a):
    _, record, rows = fig3a
    s = record["settings"]
    assert len(rows) == len(s["sizes"]) * len(s["widths"]) * len(s["seeds"])
    assert all(record["checks"].values())
    for r in rows:
        assert 1 <= int(r["clusters"]) <= int(r["d"])
    # The summary is the mean over seeds of the rows.
    for entry in record["summary"]:
        c = [
            int(r["clusters"])
            for r in rows
            if int(r["d"]) == entry["d"] and int(r["N"]) == entry["N"]
        ]
        assert entry["clusters_mean"] == pytest.approx(np.mean(c))


def test_table_g_merging_respects_the_bound(table_g):
    out, record, rows = table_g
    assert (out / "table_g_merging.md").read_text().count("\n| ") == 1 + len(
        rows
    )  # header + one line per run
    assert all(record["checks"].values())
    tau = record["settings"]["tau"]
    for r in record["rows"]:
        assert r["bound_holds"] and r["max_logit_change"] <= r["max_bound"] * (1 + 1e-5) + 1e-6
        assert r["max_angle_gap"] <= np.sqrt(2 * (1 - tau)) + 1e-6
        assert 1 <= r["clusters"] <= r["width"]


def test_fig3b_alignment_shrinks_clusters_before_the_loss_drops(fig3b):
    _, record, rows = fig3b
    width = record["settings"]["width"]
    assert all(record["checks"].values())
    for r in record["rows"]:
        # Random directions in D = 785 dimensions: no pair reaches cos 0.95 at initialisation.
        assert r["clusters_init"] == width
        assert r["t_before_drop"] <= r["t_end"]
    small = [r for r in record["rows"] if r["sigma"] == min(record["settings"]["sigmas"])]
    assert small and all(r["clusters_before_drop"] < r["clusters_init"] for r in small)
    assert len(record["clusters_along_training"]) == len(record["rows"])


def test_fig4_early_alignment_ranks_final_norms(fig4):
    _, record, rows = fig4
    assert all(record["checks"].values())
    for result in record["results"]:
        seed = result["seed"]
        mine = [r for r in rows if int(r["seed"]) == seed]
        assert len(mine) == record["settings"]["width"]
        # The reported ρ is the Spearman correlation of the CSV columns.
        rho = spearman(
            [float(r["cos_delta_early"]) for r in mine], [np.log(float(r["P_final"])) for r in mine]
        )
        early = result["spearman_log_P"]["cos_delta_early"]
        assert early["rho"] == pytest.approx(rho, abs=1e-9)
        assert early["rho"] > 0.5 and early["p_value"] < 0.05
        assert 0 < early["p_value"] <= 1


def test_fig5_imp_invariants(fig5):
    _, record, rows = fig5
    checks = record["checks"]
    assert all(checks.values()), checks
    for name in (
        "sparsity_exact_each_round",
        "schedule_is_rounded_geometric",
        "masks_nested",
        "pruned_weights_exactly_zero",
        "control_pruned_weights_exactly_zero",
        "random_mask_same_count",
        "biases_never_pruned",
        "dense_round_matches_recorded_run",
        "rewind_to_init",
    ):
        assert checks[name], name
    n = record["settings"]["prunable_weights"]
    for entry in record["per_sparsity"]:
        s = entry["target_sparsity"]
        assert abs(entry["pruned_per_round"][-1] - n * s) <= 0.5 + 1e-6 * n  # float32 schedule
        assert entry["sparsity_per_round"][-1] == pytest.approx(entry["pruned_per_round"][-1] / n)
        assert (1 - entry["per_round_fraction_q"]) ** 3 == pytest.approx(1 - s)
        mine = [r for r in rows if float(r["target_sparsity"]) == s]
        assert len(mine) == record["settings"]["width"]
        assert all(0 <= int(r["pruned_incoming"]) <= 784 for r in mine)

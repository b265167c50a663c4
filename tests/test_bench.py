"""``gflow bench`` on a tiny workload: the report's schema, same-run ratios, partial reports."""

import ast
import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gflow._benchmarking as benchmarking  # its module globals, for monkeypatching
from gflow import SGDConfig, init_params, load_dataset, train_sgd, training_data
from gflow._sgd import _batch_indices
from gflow.benchmarking import (
    QUICK,
    BenchSettings,
    kernel_flops,
    numpy_sgd_sweep,
    run_bench,
    settings_with,
    torch_sgd_sweep,
    workload_flops,
    write_report,
)
from gflow.cli import main

HAS_TORCH = importlib.util.find_spec("torch") is not None
TINY = [
    "--quick",
    "--seeds",
    "2",
    "--steps",
    "20",
    "--record-every",
    "10",
    "--chunk",
    "5",
    "--repeats",
    "2",
    "--width",
    "8",
    "--samples",
    "40",
    "--dim",
    "64",
    "--cells-probes",
    "256",
    "--cells-samples",
    "40",
    "--memory-seeds",
    "4",
    "--quiet",
]


def _gflow_command() -> list[str]:
    """The installed console command (its folder, not the working directory, leads sys.path)."""
    script = shutil.which("gflow", path=str(Path(sys.executable).parent))
    if script is not None:
        return [script]
    return [sys.executable, "-P", "-c", "import sys; from gflow.cli import main; main()"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """``gflow bench`` run as a user runs it from the folder that holds a ``gflow/`` checkout:
    a ``gflow/`` directory that is not the package sits in the working directory, where a
    ``python -c`` child would import it as a namespace package. The memory section's child
    process must import the installed gflow all the same."""
    folder = tmp_path_factory.mktemp("checkout-parent")
    (folder / "gflow").mkdir()
    (folder / "gflow" / "README.md").write_text("a checkout, not the package\n")
    path = folder / "bench.json"
    argv = ["bench", "--json", str(path), "--only", "sweep,memory,cells", *TINY]
    proc = subprocess.run(
        [*_gflow_command(), *argv], cwd=folder, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(path.read_text())


def test_sweep_entries_have_the_schema_and_same_run_ratios(report):
    modes = {e["mode"] for e in report["sweep"]}
    assert modes == {"shared", "shared-weights", "per-seed"}
    limit = report["matmul"]["limit_gflops"]
    assert limit > 0
    for e in report["sweep"]:
        for key in (
            "S",
            "mode",
            "seconds",
            "steps_per_s",
            "speedup_vs_numpy",
            "speedup_vs_torch",
            "roofline_fraction",
        ):
            assert key in e
        assert e["S"] == 2 and e["seconds"] > 0
        assert e["steps_per_s"] == pytest.approx(e["S"] * e["steps"] / e["seconds"])
        assert e["speedup_vs_numpy"] == pytest.approx(e["numpy_seconds"] / e["seconds"])
        flops = workload_flops(8, 64, 4, e["S"], e["steps"])
        assert e["roofline_fraction"] == pytest.approx(flops / e["seconds"] / 1e9 / limit)
        own = kernel_flops(e["basis"], 8, 40, 64, 4, e["S"], e["steps"])
        assert e["kernel_roofline_fraction"] == pytest.approx(own / e["seconds"] / 1e9 / limit)
        assert e["basis"] == (
            "weights" if e["mode"] == "shared-weights" else "samples"
        )  # N = 40 < 2D
        if HAS_TORCH:
            assert e["speedup_vs_torch"] == pytest.approx(e["torch_seconds"] / e["seconds"])
        else:
            assert e["speedup_vs_torch"] is None and e["torch_seconds"] is None
        assert e["traces"] == 1  # one compilation, then new learning-rate values reuse it
        assert e["compile_seconds"] >= 0
    assert report["versions"]["torch"] == (None if not HAS_TORCH else report["versions"]["torch"])


def test_memory_and_cells_sections(report):
    mem = report["memory"]
    assert mem["seeds"] == 4 and mem["peak_rss_gib"] >= mem["baseline_rss_gib"] > 0
    # 4 seeds × 6 records (50 steps, every 10) × 8 neurons × 3 float32 observables streamed.
    assert mem["norms_streamed_mib"] == pytest.approx(4 * 6 * 8 * 3 * 4 / 2**20)
    cells = report["cells"]
    if importlib.util.find_spec("gflow.cells") is None:
        assert cells["available"] is False
    else:
        assert cells["available"] is True and cells["M"] == 256 and cells["N"] == 40
        assert len(cells["seconds_all"]) == report["settings"]["repeats"]
        assert cells["seconds"] == np.median(cells["seconds_all"])
        assert all(v["estimate"] >= 1 for v in cells["kappa"].values())


RATES = {"numpy_gflops": 1.0, "xla_gflops": 1.0, "limit_gflops": 1.0}  # matmul_limit, not timed


def test_a_failing_section_keeps_what_was_measured_before_it(tmp_path, monkeypatch, capsys):
    """The report is written after every section: a crash in a later section leaves the earlier
    ones and the failure (section, error, traceback) in the JSON, and prints one line."""
    measured = {"peak_rss_gib": 1.0}

    def crash(*args, **kwargs):
        raise RuntimeError("simulated failure\nover two lines")

    monkeypatch.setattr(benchmarking, "bench_memory", lambda *a, **k: measured)
    monkeypatch.setattr(benchmarking, "bench_cells", crash)
    monkeypatch.setattr(benchmarking, "matmul_limit", lambda size, repeats: {"size": size, **RATES})
    path = tmp_path / "partial.json"
    argv = ["bench", "--json", str(path), "--only", "cells,memory", "--repeats", "1", "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "simulated failure over two lines" in err
    assert "memory" in err and str(path) in err
    partial = json.loads(path.read_text())
    assert partial["memory"] == measured and "cells" not in partial
    assert partial["failed"]["section"] == "cells"
    assert "RuntimeError: simulated failure" in partial["failed"]["error"]
    assert "crash" in partial["failed"]["traceback"]
    assert not list(tmp_path.glob("*.partial"))  # written atomically


def test_settings_with_reads_each_field_as_its_type():
    s = settings_with(QUICK, ["seeds=1,4", "ode_dt=0.125", "ode_solver=heun", "repeats=2"])
    assert (s.seeds, s.ode_dt, s.ode_solver, s.repeats) == ((1, 4), 0.125, "heun", 2)
    assert settings_with(QUICK, ["ode_perturbations=none"]).ode_perturbations == ()
    assert settings_with(QUICK, ["ode_dtypes=float64"]).ode_dtypes == ("float64",)
    few = settings_with(QUICK, ["memory_seeds=4"])
    assert (few.memory_seeds, few.memory_group) == (4, 4)  # the group shrinks with the seeds
    for bad, words in (("steps=1.5", "integers"), ("nope=1", "NAME=VALUE"), ("steps", "NAME")):
        with pytest.raises(ValueError, match=words):
            settings_with(QUICK, [bad])
    with pytest.raises(ValueError, match="multiple of record_every"):
        settings_with(QUICK, ["steps=70"])  # validated by BenchSettings


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_benchmark_scripts_import_only_public_gflow_names():
    """The scripts in benchmarks/ run on gflow's public API."""
    scripts = list(BENCHMARKS.glob("*.py"))
    assert {p.stem for p in scripts} >= {"_common", "run_all", "ode_cost", "sliding_flow"}
    for path in scripts:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            private = [n for n in names if n.startswith("gflow") and "._" in n]
            assert not private, (path.name, private)


def test_benchmark_script_writes_the_report_of_its_section(tmp_path, monkeypatch):
    """``benchmarks/sweep_memory.py``: its options become the settings of its one section."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    seen = {}

    def fake_memory(settings, **kwargs):
        seen["settings"] = settings
        return {"seeds": settings.memory_seeds}

    monkeypatch.setattr(benchmarking, "bench_memory", fake_memory)
    monkeypatch.setattr(benchmarking, "matmul_limit", lambda size, repeats: {"size": size, **RATES})
    script = importlib.import_module("sweep_memory")
    path = tmp_path / "memory.json"
    argv = ["--json", str(path), "--quick", "--set", "memory_seeds=3", "--quiet"]
    assert script.run(argv) == 0
    out = json.loads(path.read_text())
    assert out["sections"] == ["memory"] and out["memory"] == {"seeds": 3}
    assert out["quick"] is True and out["settings"]["memory_seeds"] == 3
    assert seen["settings"] == settings_with(QUICK, ["memory_seeds=3"])
    assert script.run(["--json", str(path), "--set", "memory_seeds=0", "--quiet"]) == 2


def test_unknown_section_is_a_usage_error(tmp_path, capsys):
    assert (
        main(["bench", "--json", str(tmp_path / "x.json"), "--only", "sweep,odes", "--quiet"]) == 2
    )
    assert "--only" in capsys.readouterr().err


@pytest.mark.parametrize("solver", ["heun"])
def test_ode_section_float64_against_gd(tmp_path, solver):
    """The float64 flow through the loss drop by projected Heun (the implicit solvers' exact
    balance is checked in tests/test_flow_solvers.py, the same analysis for any solver): balance
    drift at rounding, a loss that never rises, GD at η, η/2, η/4 converging at first order over
    the whole run (a small, well-conditioned problem), and the equal-error ratios recomputed from
    the report's own errors and timings."""
    # `gflow bench --only ode --small-ode --ode-dtypes float64 --ode-solver SOLVER --ode-dt
    # 0.125`, through the library (the matmul limit, which the ODE section does not use, small).
    small_ode = ["ode_width=16", "ode_samples=60", "ode64_width=16", "ode64_samples=60"]
    settings = settings_with(
        BenchSettings(),
        [*small_ode, "ode_max_steps=4000", "ode_dtypes=float64", f"ode_solver={solver}"]
        + ["ode_dt=0.125", "matmul_size=128"],
    )
    path = tmp_path / "ode.json"
    write_report(run_bench(settings, sections=("ode",), use_torch=False, log=lambda m: None), path)
    report = json.loads(path.read_text())["ode"]
    assert set(report) == {"float64"}
    ode = report["float64"]
    assert (
        ode["status"] == "ok"
        and ode["solver"] == solver
        and ode["t_reached"] == pytest.approx(ode["t_end"])
    )
    assert ode["balance_projection"] == (solver == "heun")
    if solver == "heun":
        assert 0 < ode["balance_defect_max"] < 1e-2
    assert ode["balance_drift"] <= 1e-12 < 1e-2 < ode["sgd_balance_drift"]
    assert ode["loss_end"] < 0.5 * ode["loss_start"] and ode["loss_rises"] == 0
    assert ode["loss_end"] == pytest.approx(ode["gd_loss_end"][-1], rel=0.01)
    etas = ode["gd_levels"]
    assert etas[1] == pytest.approx(etas[0] / 2) and etas[2] == pytest.approx(etas[0] / 4)
    errs = ode["gd_trajectory_errors"]
    # Against the second Richardson level, GD's error halves with η (first order) ...
    assert errs[1] / errs[0] == pytest.approx(0.5, abs=0.05) and errs[2] / errs[1] == pytest.approx(
        0.5, abs=0.05
    )
    assert ode["reference_uncertainty"] < 0.1 * errs[2]
    # ... so the whole run is the resolved window, and the ODE beats GD at η/4.
    assert ode["resolved_saves"] == 61 and ode["window"]["trajectory_error"] == pytest.approx(
        ode["trajectory_error"]
    )
    assert ode["trajectory_error"] < errs[2]
    slope, log_c = np.polyfit(np.log(etas), np.log(errs), 1)
    eta_eq = float(np.exp((np.log(ode["trajectory_error"]) - log_c) / slope))
    assert ode["gd_eta_equal_error"] == pytest.approx(eta_eq, rel=1e-9)
    gd_seconds = ode["gd_seconds_per_step"] * ode["t_end"] / eta_eq
    assert ode["ode_over_gd_equal_error"] == pytest.approx(ode["seconds"] / gd_seconds, rel=1e-9)
    # GD from perturbed starts: the start moves by ε, and on this problem (no neuron held on a
    # gate boundary) the run responds linearly: the same amplification for ε = 1e-12 and 1e-8.
    assert [p["epsilon"] for p in ode["perturbations"]] == [1e-12, 1e-8]
    for p in ode["perturbations"]:
        assert (
            p["gap_params"][0] == pytest.approx(p["epsilon"], rel=0.1)
            and len(p["gap_params"]) == 61
        )
    small, large = ode["perturbations"]
    assert large["amplification_end"] == pytest.approx(small["amplification_end"], rel=1e-3)
    assert [m["boundary_pairs"][-1] for m in ode["gate_margins"]] == [0, 0, 0]
    assert len(ode["gate_margins"]) == 3 and len(ode["gate_margins"][0]["boundary_pairs"]) == 61
    assert ode["ode_gate_margins"]["boundary_pairs"][-1] == 0
    assert [c["pairs_chattering"] for c in ode["gate_chatter"]] == [0, 0, 0]


@pytest.mark.parametrize("value", ["2", "0", "abc"])
def test_bad_ode_perturbations_are_a_usage_error(tmp_path, capsys, value):
    assert (
        main(
            [
                "bench",
                "--json",
                str(tmp_path / "x.json"),
                "--only",
                "ode",
                "--ode-perturbations",
                value,
                "--quiet",
            ]
        )
        == 2
    )
    assert "perturbation" in capsys.readouterr().err


def test_unknown_ode_solver_is_a_usage_error_before_anything_runs(tmp_path, capsys):
    path = tmp_path / "x.json"
    argv = ["bench", "--json", str(path), "--only", "ode", "--ode-solver", "rk99", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rk99" in err and not path.exists()


def test_bad_ode_dtypes_is_a_usage_error(tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "--json",
                str(tmp_path / "x.json"),
                "--only",
                "ode",
                "--ode-dtypes",
                "float16",
                "--quiet",
            ]
        )
        == 2
    )
    assert "float32 and/or float64" in capsys.readouterr().err


def _reference_problem():
    ds = load_dataset("clusters", n_samples=24, dim=10, seed=1, test_samples=0)
    data = training_data(ds, jnp.float64)
    keys = jax.random.split(jax.random.key(0), 2)
    params = [init_params(jax.random.key(s), 6, 10, 0.3, dtype=jnp.float64) for s in range(2)]
    steps, record_every, batch = 30, 10, 4
    orders = np.stack(
        [
            np.stack([np.asarray(_batch_indices(k, i, 24, batch)) for i in range(steps)])
            for k in keys
        ]
    )
    stacked = [np.stack([np.asarray(getattr(p, f)) for p in params]) for f in ("W", "b", "V")]
    cfg = SGDConfig(steps=steps, record_every=record_every, batch_size=batch)
    trajs = [
        train_sgd(p, k, data, learning_rate=0.2, momentum=0.9, config=cfg)
        for p, k in zip(params, keys)
    ]
    return ds, stacked, orders, trajs


@pytest.mark.parametrize("reference", ["numpy", "torch"])
def test_references_follow_the_same_trajectory(reference):
    """The loops the benchmark times compute what gflow computes (float64, same batches)."""
    if reference == "torch" and not HAS_TORCH:
        pytest.skip("torch is not installed")
    ds, (W0, b0, V0), orders, trajs = _reference_problem()
    fn = numpy_sgd_sweep if reference == "numpy" else torch_sgd_sweep
    w_norm, v_norm, bias = fn(
        W0,
        b0,
        V0,
        np.asarray(ds.x, np.float64),
        np.asarray(ds.y),
        orders,
        learning_rate=0.2,
        momentum=0.9,
        record_every=10,
    )
    for s, traj in enumerate(trajs):
        np.testing.assert_allclose(w_norm[s], traj.observables.w_norm, rtol=1e-10)
        np.testing.assert_allclose(v_norm[s], traj.observables.v_norm, rtol=1e-10)
        np.testing.assert_allclose(bias[s], traj.observables.b, rtol=1e-9, atol=1e-12)
    assert float(trajs[0].observables.loss[-1]) < 0.9 * float(trajs[0].observables.loss[0])

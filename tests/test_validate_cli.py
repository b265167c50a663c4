"""``gflow validate`` and ``gflow cells`` on tiny synthetic sets: JSON schema, exit status, "
"errors."""

from __future__ import annotations

import json
import math

import pytest

from gflow.cli import main
from gflow.theory import Check

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
    """scripts/validation_report.py --quick runs gflow validate on TINY's problem (the same
    compilation as the test above, in this file's worker) and its page shows those verdicts."""
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
    import gflow._theory

    def fake_checks(traj, data, *, settings):
        return [
            Check(f"check{i}", 1.0, 1.0, 0.0 if ok else 2.0, 1.0, ok, "", kind)
            for i, (kind, ok) in enumerate(verdicts)
        ], {}

    monkeypatch.setattr(gflow._theory, "validate_trajectory", fake_checks)
    assert main(["validate", *TINY, "--probe-seeds", "0", "--quiet"]) == status
    printed = capsys.readouterr().out
    assert ("FAIL" in printed) == (status == 1)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--width", "0"], "--width"),
        (["--sigma", "-1"], "--sigma"),
        (["--seeds", "a,b"], "--seeds"),
        (["--records", "3"], "--records"),
        (["--json", "/nonexistent-folder/x.json"], "--json"),
        (["--dataset", "nonsense"], "nonsense"),
        (["--solver", "rk99"], "solver"),
        (["--dataset", "mnist", "--preprocess", "pixel"], "preprocess"),
        (["--sliding-capacity", "0"], "--sliding-capacity"),
        (["--solver", "tsit5", "--sliding-capacity", "8"], "--sliding-capacity"),
    ],
)
def test_validate_bad_input_is_one_line_and_status_2(capsys, argv, needle):
    assert main(["validate", "--dataset", "clusters", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_cells_json_and_bad_input(tmp_path, capsys):
    out = tmp_path / "cells.json"
    rc = main(
        [
            "cells",
            "--dataset",
            "clusters",
            "--n-per-class",
            "60",
            "--probes",
            "300",
            "--probe-seeds",
            "2",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    payload = json.loads(out.read_text())
    assert payload["n_samples"] == 120 and payload["dim"] == 20
    assert int(payload["cover_bound"]) > 0 and payload["log10_cover_bound"] == pytest.approx(
        math.log10(int(payload["cover_bound"]))
    )
    for row in payload["kappa"]:
        assert row["kappa"] in (1, -1) and len(row["estimates"]) == 2
        assert row["mean"] == pytest.approx(sum(row["estimates"]) / 2)
        for curve, est in zip(row["curves"], row["estimates"]):
            assert min(curve) == est and curve[0] <= 300
    assert "Cover bound" in capsys.readouterr().out
    assert main(["cells", "--dataset", "clusters", "--patience", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--patience" in err


def test_heartbeat_reports_a_silent_step_and_its_end():
    """validate's long steps (compile + ODE solve, checks) print progress lines while they run."""
    import io
    import time

    from gflow._cli._validate import heartbeat

    stream = io.StringIO()
    with heartbeat("seed 0: ODE", enabled=True, interval=0.02, stream=stream):
        time.sleep(0.15)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("seed 0: ODE") and "started" in lines[0]
    assert sum("running" in line for line in lines) >= 2
    assert "1/1" in lines[-1] and "done" in lines[-1]
    quiet = io.StringIO()
    with heartbeat("seed 0: ODE", enabled=False, interval=0.01, stream=quiet):
        time.sleep(0.05)
    assert quiet.getvalue() == ""

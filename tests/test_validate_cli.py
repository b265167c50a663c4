"""``gflow validate`` and ``gflow cells`` on tiny synthetic sets: JSON schema, exit status, "
"errors."""

from __future__ import annotations

import json
import math

import pytest

from gflow.cli import main


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
        (["--sliding-halvings", "-1"], "--sliding-halvings"),
        (["--solver", "tsit5", "--sliding-halvings", "1"], "--sliding-halvings"),
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

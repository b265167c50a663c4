"""`gflow demo` end to end on a small slice of the embedded digits."""

import json

import numpy as np
import pytest

from gflow.cli import main


@pytest.mark.slow
def test_demo_writes_summary_and_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(
        ["demo", "--quick", "--n-per-class", "60", "--width", "12", "--out", str(out), "--quiet"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "loss-drop time" in printed and "carry 90% of the total norm" in printed
    summary = json.loads((out / "summary.json").read_text())
    for png in summary["figures"]:
        assert (out / png).stat().st_size > 5000
    ode, sgd = summary["ode"], summary["sgd"]
    # Both runs go through the loss drop inside the simulated window, at comparable times.
    for run in (ode, sgd):
        assert 0 < run["loss_drop_time"] < summary["t_end"]
        assert run["final_loss"] < 0.6
        assert 1 <= run["race_winners"] <= 12
    assert abs(ode["loss_drop_time"] - sgd["loss_drop_time"]) < 0.3 * ode["loss_drop_time"]
    # The ODE conserves the balance far better than SGD, whose drift is O(η).
    assert ode["balance_drift"] < 1e-2 * sgd["balance_drift"]
    assert summary["n_samples"] == 120 and summary["dim"] == 784
    assert np.isfinite(ode["final_test_accuracy"])


def test_demo_rejects_bad_values_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--width", "abc"])
    assert exit_info.value.code == 2
    assert main(["demo", "--sigma", "-1", "--out", "/tmp/unused-gflow-demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gflow demo: error: sigma must be > 0")
    assert "Traceback" not in "\n".join(err)


def test_demo_summary_says_no_drop_with_the_reason():
    """A run whose loss did not drop prints "no drop" and why, never a drop time."""
    from gflow.runs import format_summary
    from gflow.theory import loss_drop

    t = np.linspace(0.0, 97.0, 98)
    flat = loss_drop(t, np.log(2.0) - 1e-3 * t / t[-1])  # 0.693 → 0.692: no drop
    dropped = loss_drop(t, np.where(t < 50, np.log(2.0), 0.2))
    assert flat.time is None and dropped.time == 50.0

    def run(drop):
        return {
            "loss_drop_time": drop.time,
            "no_drop_reason": drop.reason,
            "final_loss": 0.69,
            "final_train_accuracy": 0.5,
            "final_test_accuracy": 0.5,
            "balance_drift": 1e-7,
            "race_winners": 3,
            "steps": 10,
            "seconds": 1.0,
        }

    text = format_summary({"config": {"width": 8}, "ode": run(flat), "sgd": run(dropped)})
    assert text.splitlines()[1].split() == ["loss-drop", "time", "t", "no", "drop", "50.0"]
    assert f"no loss drop (ODE): {flat.reason}" in text and "(SGD):" not in text

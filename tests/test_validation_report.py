"""scripts/validation_report.py: the page's verdicts are those of the checks it ran (its --quick
mode on a real run is tested in tests/test_validate_cli.py, which compiles the same problem)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "validation_report.py"


@pytest.fixture(scope="module")
def report_module():
    spec = importlib.util.spec_from_file_location("validation_report", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(name, kind, passed, err, tol=0.1):
    return {
        "name": name,
        "kind": kind,
        "predicted": 1.0,
        "measured": 1.0 + err,
        "rel_error": err,
        "tolerance": tol,
        "passed": passed,
        "detail": f"detail of {name}",
    }


def test_page_counts_each_cells_passing_seeds(report_module, tmp_path):
    cells = [
        {"dataset": "MNIST (embedded)", "preset": "pixels", "argv": [], "seeds": "0,1"},
        {"dataset": "Gaussian mixture", "preset": "as generated", "argv": [], "seeds": "0,1"},
    ]

    def payload(race_ok):
        checks = [
            _row("balance_drift", "identity", True, 1e-15, 1e-8),
            _row("phase3.race_rate", "claim", race_ok[0], 0.01 if race_ok[0] else 0.3),
            _row("balance_drift", "identity", True, 2e-15, 1e-8),
            _row("phase3.race_rate", "claim", race_ok[1], 0.02 if race_ok[1] else 0.5),
        ]
        return {
            "checks": checks,
            "dataset": "a dataset",
            "settings": {"width": 4, "sigma": 1e-5, "t_end": 10.0},
            "report": {
                "0": {"t_drop": 5.0, "phase3": {"noise": 1e-5}},
                "1": {"t_drop": 6.0, "phase3": {"noise": 3e-5}},
            },
        }

    cells.append({"dataset": "CIFAR", "preset": "pixels", "argv": [], "seeds": "0,1"})
    failed = {"failed": "solver overflow", "checks": [], "report": {}, "settings": None}
    payloads = [payload((True, False)), payload((True, True)), failed]
    table = report_module.summarise_cells(cells, payloads)
    assert table["phase3.race_rate"]["cells"][0]["passed"] == 1
    assert table["phase3.race_rate"]["cells"][1]["passed"] == 2
    assert table["phase3.race_rate"]["cells"][0]["rel_error"] == pytest.approx(0.255)
    page = tmp_path / "validation.md"
    text = report_module.render(cells, payloads, table, command="test", figures=tmp_path, page=page)
    verdicts = re.search(r"\| `phase3.race_rate` \| claim \| (.*) \|", text)
    assert verdicts is not None and verdicts.group(1) == "FAIL 1/2 | pass 2/2 | —"
    assert "| `balance_drift` | identity | pass 2/2 | pass 2/2 | — |" in text
    assert "| 2 | CIFAR | pixels | not run: solver overflow |" in text
    # identities are listed before claims
    assert text.index("`balance_drift` | identity") < text.index("`phase3.race_rate` | claim")
    # a failing claim gets its evidence figure and a reason; a passing identity gets neither
    assert (tmp_path / "validation_phase3_race_rate.png").is_file()
    assert not (tmp_path / "validation_balance_drift.png").exists()
    assert "Most likely reason: the conjecture takes b ≈ 0" in text
    # its evidence row: the median over seeds of the reported noise
    assert re.search(r"\| 0 \| — \| — \| 2e-05 \|", text)
    for name in ("MNIST", "Gaussian mixture", "`pixels`", "`center-unit`", "CIFAR"):
        assert name in text

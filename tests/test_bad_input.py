"""Bad input, through the library and through the command line.

Every case is refused twice: by the API with a ``ValueError`` whose message names the field and
what is allowed, and by ``gflow`` with exactly one line on stderr, exit status 2 and no
traceback. Every case fails before anything is compiled, so the matrix is fast.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

import gflow
from gflow.cli import main
from gflow.datasets import dataset_from_options
from gflow.runs import RunConfig, load_run, read_config_file, sweep

RNG = np.random.default_rng(0)
X = RNG.normal(size=(10, 4))
Y = np.array([0, 1] * 5)


def _npz(folder: Path, name: str, **arrays) -> Path:
    path = folder / name
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad-input")
    x_nan = X.copy()
    x_nan[3, 1] = np.nan
    x_inf = X.copy()
    x_inf[0, 0] = np.inf
    out = {
        "nan": _npz(d, "nan.npz", x_train=x_nan, y_train=Y),
        "inf": _npz(d, "inf.npz", x_train=x_inf, y_train=Y),
        "one_class": _npz(d, "one_class.npz", x_train=X, y_train=np.zeros(10, int)),
        "empty": _npz(d, "empty.npz", x_train=np.zeros((0, 4)), y_train=np.zeros(0, int)),
        "mismatch": _npz(d, "mismatch.npz", x_train=X, y_train=Y[:9]),
        "missing": d / "does-not-exist.npz",
        "corrupt": d / "corrupt.npz",
        "unknown_key": d / "unknown_key.toml",
        "bad_toml": d / "bad.toml",
        "blocker": d / "a-file",
        "missing_toml": d / "nope.toml",
    }
    out["corrupt"].write_bytes(b"PK\x03\x04" + os.urandom(200))  # zip magic, then garbage
    out["unknown_key"].write_text('trainer = "gd"\nwidht = 8\n')
    out["bad_toml"].write_text("width = = 8\n")
    out["blocker"].write_text("not a folder\n")
    out["not_a_run"] = d / "not-a-run"
    out["not_a_run"].mkdir()
    out["huge"] = _npz(d, "huge.npz", x_train=X * 1e300, y_train=Y)
    out["constant"] = _npz(d, "constant.npz", x_train=np.full((10, 4), 0.5), y_train=Y)
    out["crafted_cifar"] = crafted_cifar_dir(d / "crafted-cifar", d / "marker")
    return out


class _RunsCode:
    """An object whose unpickling would run ``os.system`` (a shell command that creates a file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _ExecsCode(_RunsCode):
    """An object whose unpickling would run Python code (``exec``) that creates a file."""

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def crafted_cifar_dir(folder: Path, marker: Path, payload=_RunsCode) -> Path:
    """A cifar-10-batches-py folder whose first batch runs code when unpickled by pickle.load."""
    folder.mkdir()
    batch = {b"data": payload(marker), b"labels": [0, 1]}
    for name in ("data_batch_1", "test_batch"):
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


@pytest.fixture(scope="module")
def clusters() -> gflow.Dataset:
    return gflow.load_dataset("clusters", n_samples=64, dim=8)


def _tiny(**changes) -> RunConfig:
    base = dict(
        trainer="sgd",
        dataset="clusters",
        width=8,
        sigma=1e-3,
        lr=0.05,
        batch=8,
        steps=20,
        record_every=10,
    )
    return RunConfig(**{**base, **changes})


# (case id, API call taking (files, clusters), regex the API message must match,
#  CLI argument list taking (files, out folder), regex the CLI line must match)
CASES = [
    (
        "nan_data",
        lambda f, ds: gflow.load_dataset(f"npz:{f['nan']}"),
        r"x_train contains 1 non-finite values \(NaN or inf\)",
        lambda f, o: ["run", "--dataset", f"npz:{f['nan']}", "--out", o],
        r"non-finite values \(NaN or inf\)",
    ),
    (
        "inf_data",
        lambda f, ds: gflow.load_dataset(f"npz:{f['inf']}"),
        r"x_train contains 1 non-finite values",
        lambda f, o: ["sweep", "--dataset", f"npz:{f['inf']}", "--out", o],
        r"non-finite",
    ),
    (
        "one_class",
        lambda f, ds: gflow.load_dataset(f"npz:{f['one_class']}"),
        r"y_train contains only one class.*needs both",
        lambda f, o: ["run", "--dataset", f"npz:{f['one_class']}", "--out", o],
        r"only one class",
    ),
    (
        "empty_data",
        lambda f, ds: gflow.load_dataset(f"npz:{f['empty']}"),
        r"train split is empty",
        lambda f, o: ["run", "--dataset", f"npz:{f['empty']}", "--out", o],
        r"empty",
    ),
    (
        "shape_mismatch",
        lambda f, ds: gflow.load_dataset(f"npz:{f['mismatch']}"),
        r"disagree on the number of samples: 10 inputs vs 9 labels",
        lambda f, o: ["run", "--dataset", f"npz:{f['mismatch']}", "--out", o],
        r"10 inputs vs 9 labels",
    ),
    (
        "width_zero",
        lambda f, ds: _tiny(width=0),
        r"width must be a positive integer \(>= 1\); got 0",
        lambda f, o: ["run", "--width", "0", "--out", o],
        r"width must be a positive integer",
    ),
    (
        "n_per_class_zero",
        lambda f, ds: _tiny(n_per_class=0),
        r"n_per_class must be a positive integer \(>= 1\); got 0",
        lambda f, o: ["run", "--n-per-class", "0", "--out", o],
        r"n_per_class must be a positive integer",
    ),
    (
        "lr_negative",
        lambda f, ds: _tiny(lr=-0.1),
        r"lr must be > 0 \(the learning rate η\); got -0.1",
        lambda f, o: ["run", "--lr", "-0.1", "--out", o],
        r"lr must be > 0",
    ),
    (
        "lr_nan",
        lambda f, ds: _tiny(lr=float("nan")),
        r"lr must be finite; got nan",
        lambda f, o: ["sweep", "--lr", "0.1,nan", "--out", o],
        r"lr must be finite",
    ),
    (
        "batch_zero",
        lambda f, ds: _tiny(batch=0),
        r"batch must be a positive integer \(>= 1\); got 0",
        lambda f, o: ["run", "--batch", "0", "--out", o],
        r"batch must be a positive integer",
    ),
    (
        "sigma_zero",
        lambda f, ds: _tiny(sigma=0.0),
        r"sigma must be > 0 \(the init scale\); got 0.0",
        lambda f, o: ["sweep", "--sigma", "1e-5,0", "--out", o],
        r"sigma must be > 0",
    ),
    (
        "batch_above_N",
        lambda f, ds: sweep(ds, _tiny(batch=65)),
        r"batch \(65\) must not exceed the number of training samples N \(64\)",
        lambda f, o: [
            "run",
            "--dataset",
            "clusters",
            "--n-per-class",
            "32",
            "--batch",
            "65",
            "--out",
            o,
        ],
        r"batch \(65\) must not exceed the number of training samples N \(64\)",
    ),
    (
        "unknown_dataset",
        lambda f, ds: gflow.load_dataset("imagenet"),
        r"unknown dataset spec 'imagenet'; allowed: mnist, clusters",
        lambda f, o: ["run", "--dataset", "imagenet", "--out", o],
        r"unknown dataset spec 'imagenet'; allowed: mnist",
    ),
    (
        "missing_data_file",
        lambda f, ds: gflow.load_dataset(f"npz:{f['missing']}"),
        r"npz file not found: .*does-not-exist.npz",
        lambda f, o: ["run", "--dataset", f"npz:{f['missing']}", "--out", o],
        r"not found: .*does-not-exist.npz",
    ),
    (
        "missing_config_file",
        lambda f, ds: read_config_file(f["missing_toml"]),
        r"config file not found: .*nope.toml",
        lambda f, o: ["sweep", "--config", str(f["missing_toml"]), "--out", o],
        r"config file not found",
    ),
    (
        "corrupt_file",
        lambda f, ds: gflow.load_dataset(f"npz:{f['corrupt']}"),
        r"npz file .*corrupt.npz is corrupt or truncated",
        lambda f, o: ["run", "--dataset", f"npz:{f['corrupt']}", "--out", o],
        r"corrupt",
    ),
    (
        "unknown_config_key",
        lambda f, ds: RunConfig.from_mapping(read_config_file(f["unknown_key"]), source="the file"),
        r"unknown key 'widht' in the file; allowed keys: trainer, dataset, .*width",
        lambda f, o: ["run", "--config", str(f["unknown_key"]), "--out", o],
        r"unknown key 'widht' in config file .*allowed keys: trainer",
    ),
    (
        "bad_toml",
        lambda f, ds: read_config_file(f["bad_toml"]),
        r"bad.toml is not valid TOML: .*line 1",
        lambda f, o: ["run", "--config", str(f["bad_toml"]), "--out", o],
        r"is not valid TOML",
    ),
    (
        "out_is_a_file",
        lambda f, ds: sweep(ds, _tiny(), out=f["blocker"]),
        r"output folder .*a-file exists and is a file",
        lambda f, o: ["run", "--dataset", "clusters", "--out", str(f["blocker"])],
        r"output folder .*a-file exists and is a file",
    ),
    (
        "out_below_a_file",
        lambda f, ds: sweep(ds, _tiny(), out=f["blocker"] / "run"),
        r"cannot create output folder .*: a file is in the way",
        lambda f, o: ["sweep", "--dataset", "clusters", "--out", str(f["blocker"] / "run")],
        r"a file is in the way",
    ),
    (
        "t_grid_not_increasing",
        lambda f, ds: RunConfig(trainer="flow", t_grid=(0.0, 2.0, 1.0)),
        r"t_grid must be strictly increasing; t_grid\[1\]=2.0 >= t_grid\[2\]=1.0",
        lambda f, o: ["run", "--trainer", "flow", "--t-grid", "0,2,1", "--out", o],
        r"t_grid must be strictly increasing",
    ),
    (
        "momentum_one",
        lambda f, ds: _tiny(momentum=1.0),
        r"momentum must be in \[0, 1\) \(β of SGD with momentum\); got 1.0",
        lambda f, o: ["run", "--momentum", "1", "--out", o],
        r"momentum must be in \[0, 1\)",
    ),
    (
        "unknown_trainer",
        lambda f, ds: RunConfig(trainer="adam"),
        r"trainer must be one of 'sgd', 'gd', 'flow'; got 'adam'",
        lambda f, o: ["run", "--trainer", "adam", "--out", o],
        r"trainer must be one of 'sgd', 'gd', 'flow'",
    ),
    (
        "unknown_solver",
        lambda f, ds: RunConfig(trainer="flow", solver="rk4"),
        r"solver must be one of \[.*'tsit5'\]; got 'rk4'",
        lambda f, o: ["run", "--trainer", "flow", "--solver", "rk4", "--out", o],
        r"solver must be one of",
    ),
    (
        "key_of_other_trainer",
        lambda f, ds: RunConfig(trainer="flow", lr=0.1),
        r"lr does not apply to trainer 'flow'; its keys are: t_end, save_points",
        lambda f, o: ["run", "--trainer", "flow", "--lr", "0.1", "--out", o],
        r"lr does not apply to trainer 'flow'",
    ),
    (
        "empty_seed_range",
        lambda f, ds: RunConfig(seeds="5:2"),
        r"seeds range '5:2' is empty",
        lambda f, o: ["sweep", "--seeds", "5:2", "--out", o],
        r"seeds range '5:2' is empty",
    ),
    (
        "steps_not_multiple",
        lambda f, ds: _tiny(steps=25),
        r"steps \(25\) must be a multiple of record_every \(10\)",
        lambda f, o: ["run", "--steps", "25", "--record-every", "10", "--out", o],
        r"must be a multiple of record_every",
    ),
    (
        "not_a_run_folder",
        lambda f, ds: load_run(f["not_a_run"]),
        r"not-a-run is not a gflow run folder: config.json .* is missing",
        lambda f, o: ["figures", str(f["not_a_run"])],
        r"is not a gflow run folder",
    ),
    (
        "huge_values",
        lambda f, ds: gflow.load_dataset(f"npz:{f['huge']}"),
        r"preprocess 'center-unit': the centred mean squared norm overflows float64 "
        r"\(training inputs up to \|x\| = 2.\d+e\+300\)",
        lambda f, o: ["run", "--dataset", f"npz:{f['huge']}", "--out", o],
        r"overflows float64",
    ),
    (
        "huge_values_standardize",
        lambda f, ds: gflow.load_dataset(f"npz:{f['huge']}", preprocess="standardize"),
        r"preprocess 'standardize': the standard deviation of a feature overflows float64",
        lambda f, o: [
            "sweep",
            "--dataset",
            f"npz:{f['huge']}",
            "--preprocess",
            "standardize",
            "--out",
            o,
        ],
        r"overflows float64",
    ),
    (
        "constant_features",
        lambda f, ds: gflow.load_dataset(f"npz:{f['constant']}", preprocess="standardize"),
        r"preprocess 'standardize': all 4 features are constant on the 10 training inputs",
        lambda f, o: [
            "run",
            "--dataset",
            f"npz:{f['constant']}",
            "--preprocess",
            "standardize",
            "--out",
            o,
        ],
        r"all 4 features are constant",
    ),
    (
        "constant_inputs_centred",
        lambda f, ds: gflow.load_dataset(f"npz:{f['constant']}", preprocess="center"),
        r"preprocess 'center': every x_train input is 0 after preprocessing",
        lambda f, o: (
            ["run", "--dataset", f"npz:{f['constant']}", "--preprocess", "center"] + ["--out", o]
        ),
        r"every x_train input is 0",
    ),
    (
        "crafted_cifar_batch",
        lambda f, ds: gflow.load_dataset(f"cifar:{f['crafted_cifar']}"),
        r"CIFAR-10 batch .*data_batch_1 is refused: it asks for (posix|nt)\.system, which a "
        r"CIFAR-10 batch never holds",
        lambda f, o: ["run", "--dataset", f"cifar:{f['crafted_cifar']}", "--out", o],
        r"is refused: it asks for (posix|nt)\.system",
    ),
    (
        "classes_for_synthetic_data",
        lambda f, ds: dataset_from_options("xor", classes="3/8"),
        r"classes \('3/8'\) groups the source labels of .*; dataset 'xor' has no source labels",
        lambda f, o: ["run", "--dataset", "clusters", "--classes", "3/8", "--out", o],
        r"dataset 'clusters' has no source labels to group",
    ),
    (
        "classes_for_binary_npz",
        lambda f, ds: dataset_from_options(f"npz:{f['nan']}", classes="0/1"),
        r"npz file .*nan.npz has binary labels 0/1, used as given: class1, class2 \(classes\)",
        lambda f, o: ["run", "--dataset", f"npz:{f['constant']}", "--classes", "0/1", "--out", o],
        r"has binary labels 0/1, used as given",
    ),
    (
        "not_a_number",
        lambda f, ds: _tiny(lr="fast"),
        r"lr must be a real number; got 'fast'",
        lambda f, o: ["run", "--lr", "fast", "--out", o],
        r"argument --lr: expected a number, got 'fast'",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_api_refuses_with_a_message_naming_the_field(case, files, clusters):
    _, api_call, api_message, _, _ = case
    with pytest.raises(ValueError, match=api_message):
        api_call(files, clusters)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cli_refuses_with_one_line_and_exit_2(case, files, tmp_path, capsys):
    _, _, _, cli_args, cli_message = case
    out = str(tmp_path / "out")
    try:
        code = main(cli_args(files, out))
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert lines[0].startswith("gflow ")
    assert re.search(cli_message, lines[0]), lines[0]
    # nothing was simulated: no run folder appeared
    assert not (tmp_path / "out" / "config.json").exists()


def test_matrix_is_wide():
    """At least 15 distinct bad inputs, each with both an API and a CLI form."""
    assert len({c[0] for c in CASES}) == len(CASES) >= 15


@pytest.mark.parametrize("payload", [_RunsCode, _ExecsCode], ids=["os.system", "exec"])
def test_crafted_cifar_batch_never_runs(payload, tmp_path, capsys):
    """A CIFAR batch that would run a command under pickle.load is refused, by the API and by
    the CLI, and the command never runs: its marker file is never created."""
    marker = tmp_path / "marker"
    folder = crafted_cifar_dir(tmp_path / "cifar-10-batches-py", marker, payload)
    name = r"(posix|nt)\.system" if payload is _RunsCode else r"(__builtin__|builtins)\.exec"
    with pytest.raises(ValueError, match=rf"is refused: it asks for {name},"):
        gflow.load_dataset(f"cifar:{folder}")
    assert not marker.exists()
    code = main(["run", "--dataset", f"cifar:{tmp_path}", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2 and len(captured.err.splitlines()) == 1, captured.err
    assert "Traceback" not in captured.err and "nothing was run" in captured.err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    """--out '' names no folder (it used to write into the current directory)."""
    monkeypatch.chdir(tmp_path)
    for command in ("run", "sweep"):
        with pytest.raises(SystemExit) as stop:
            main([command, "--dataset", "clusters", "--out", ""])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith(f"gflow {command}: error: argument --out: must name a folder")
    assert list(tmp_path.iterdir()) == []  # nothing written where gflow was started

"""The memory estimate of a run or sweep, and the refusal of what cannot fit, before any work.

The CLI cases reach the check in-process and are refused before anything is compiled; the
machine's available memory is fixed by monkeypatching, so the outcome does not depend on it.
"""

from __future__ import annotations

import functools
import re

import jax
import numpy as np
import pytest

import gflow
import gflow._cli._run
from gflow import RunConfig, _resources, training_data
from gflow._resources import (
    InsufficientMemory,
    MemoryEstimate,
    available_memory,
    count_seed_range,
    format_bytes,
    require_memory,
    seeds_memory,
    sweep_memory,
)
from gflow.cli import main
from gflow.runs import MemberSpec, run_members

GIB = 2**30


@pytest.fixture
def machine(monkeypatch):
    """A machine with 16 GiB available, whatever this one has."""
    monkeypatch.setattr(_resources, "available_memory", lambda: (16 * GIB, "MemAvailable"))


def _output_bytes(config: RunConfig, dataset: gflow.Dataset) -> int:
    """Bytes of one member's records, final weights, status and step count, as the compiled
    program's output shapes say (traced, not compiled)."""
    spec = MemberSpec.of(config, dataset.n_samples, dataset.dim)
    data = training_data(dataset, config.dtype)
    ones = np.ones(1, config.dtype)
    shapes = jax.eval_shape(
        functools.partial(run_members, spec=spec), data, np.zeros(1, np.int32), ones, ones, ones
    )
    return sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in jax.tree.leaves(shapes))


@pytest.mark.parametrize(
    "config",
    [
        RunConfig(trainer="gd", width=5, steps=40, record_every=10, dtype="float64"),
        RunConfig(trainer="sgd", width=3, batch=2, steps=60, record_every=10, dtype="float32"),
    ],
    ids=["gd-float64", "sgd-float32"],
)
def test_records_estimate_matches_the_program_outputs(config):
    """The per-run records and weights of the estimate are the program's outputs, to the byte."""
    dataset = gflow.load_dataset("clusters", n_samples=8, dim=4, test_samples=4)
    estimate = dict(sweep_memory(config, n_samples=8, dim=4, n_test=4).parts)
    per_run = estimate["records and final weights of all runs"]
    actual = _output_bytes(config, dataset)
    assert per_run == actual


def test_flow_records_are_its_save_points():
    """The flow records its save grid (traced shapes as for SGD/GD, whose outputs are checked
    above): 7 save points cost what 7 GD records cost."""
    flow = RunConfig(trainer="flow", width=3, t_end=2.0, save_points=7)
    grid = RunConfig(trainer="flow", width=3, t_grid=(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0))
    gd = RunConfig(trainer="gd", width=3, steps=60, record_every=10)
    results = [
        dict(sweep_memory(c, n_samples=8, dim=4, n_test=4).parts)[
            "records and final weights of all runs"
        ]
        for c in (flow, grid, gd)
    ]
    assert results[0] == results[1] == results[2]


def test_estimate_scales_with_seeds_records_and_width():
    base = RunConfig(trainer="sgd", width=10, steps=100, record_every=10, seeds="0:4")
    size = functools.partial(sweep_memory, n_samples=100, dim=20, n_test=0)
    total = size(base).total
    results = dict(size(base).parts)["records and final weights of all runs"]
    more_seeds = RunConfig(trainer="sgd", width=10, steps=100, record_every=10, seeds="0:40")
    assert dict(size(more_seeds).parts)["records and final weights of all runs"] == 10 * results
    longer = dict(size(RunConfig(trainer="sgd", width=10, steps=1000, seeds="0:4")).parts)
    # 90 more records per run, each 10 float32 and 9 bytes of integers per neuron + 4 scalars
    assert longer["records and final weights of all runs"] - results == 4 * 90 * (400 + 90 + 16)
    assert size(RunConfig(trainer="sgd", width=1000, steps=100, seeds="0:4")).total > 50 * total


def test_seed_range_count_and_describe():
    assert count_seed_range("3:10") == 7
    assert [count_seed_range(v) for v in ("5:2", "1,2", "a:b", 7, [0, 1])] == [None] * 5
    assert (
        seeds_memory(10**9).describe()
        == "about 93.1 GiB for 1,000,000,000 seeds as Python integers"
    )
    two = MemoryEstimate((("a", 3 * GIB), ("b", GIB // 2), ("c", 0)))
    assert two.describe() == "about 3.5 GiB (a 3 GiB, b 512 MiB)"
    assert format_bytes(1536) == "1.5 KiB"


def test_available_memory_reads_meminfo_then_sysconf(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       2048 kB\nMemAvailable:   1024 kB\n")
    monkeypatch.setattr(_resources, "_MEMINFO", meminfo)
    assert available_memory() == (1024 * 1024, "MemAvailable")
    monkeypatch.setattr(_resources, "_MEMINFO", tmp_path / "absent")
    monkeypatch.setattr(_resources.os, "sysconf", {"SC_AVPHYS_PAGES": 3, "SC_PAGE_SIZE": 4096}.get)
    assert available_memory() == (3 * 4096, "free physical memory")

    def unknown(name):
        raise ValueError(f"unrecognized configuration name {name}")

    monkeypatch.setattr(_resources.os, "sysconf", unknown)
    assert available_memory() is None


def test_require_memory_refuses_or_says_it_cannot_tell(machine, monkeypatch):
    assert require_memory(MemoryEstimate((("x", GIB),)), "this run") is None
    with pytest.raises(InsufficientMemory, match=r"^this run would need about 20 GiB for x, more "):
        require_memory(MemoryEstimate((("x", 20 * GIB),)), "this run")
    monkeypatch.setattr(_resources, "available_memory", lambda: None)
    note = require_memory(MemoryEstimate((("x", 20 * GIB),)), "this run")
    assert note is not None and "memory check skipped" in note and "about 20 GiB" in note


# (id, command line, what the one line says about the estimate)
TOO_BIG = [
    (
        "seeds",
        ["sweep", "--seeds", "0:2000000000"],
        r"--seeds 0:2000000000 would need about 186 GiB",
    ),
    ("steps", ["run", "--steps", "1000000000000"], r"this run would need about \d+(\.\d+)? TiB"),
    (
        "save_points",
        ["run", "--trainer", "flow", "--save-points", "1000000000"],
        r"this run would need about \d+(\.\d+)? TiB",
    ),
    (
        "save_points_sgd",
        ["sweep", "--t-end", "100", "--save-points", "1000000000"],
        r"this sweep would need about \d+(\.\d+)? TiB",
    ),
    ("width", ["run", "--width", "100000000"], r"this run would need about \d+(\.\d+)? TiB"),
]


@pytest.mark.parametrize("case", TOO_BIG, ids=[c[0] for c in TOO_BIG])
def test_cli_refuses_what_cannot_fit_in_one_line(case, machine, tmp_path, capsys):
    _, argv, estimate = case
    out = tmp_path / "out"
    code = main([*argv, "--dataset", "clusters", "--out", str(out)])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and "Traceback" not in captured.err + captured.out, captured.err
    assert re.search(rf"^gflow (run|sweep): error: {estimate}", lines[0]), lines[0]
    assert "more than the 16 GiB of memory available (MemAvailable)" in lines[0]
    assert not out.exists()  # refused before the run folder


def test_cli_says_when_memory_is_unknown(monkeypatch, tmp_path, capsys):
    """Where the available memory cannot be read the CLI says so in one line and goes on (here
    to a refusal of the output folder, which comes before any compilation)."""
    monkeypatch.setattr(_resources, "available_memory", lambda: None)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = main(["run", "--dataset", "clusters", "--width", "4", "--out", str(blocker)])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 2, lines
    assert lines[0].startswith("gflow run: note: the available memory cannot be read")
    assert "memory check skipped (this run needs about" in lines[0]
    assert "exists and is a file" in lines[1]


def test_cli_reports_an_unforeseen_memory_error_in_one_line(monkeypatch, tmp_path, capsys):
    def exhausted(**options):
        raise MemoryError

    monkeypatch.setattr(gflow._cli._run, "dataset_from_options", exhausted)
    code = main(["run", "--dataset", "clusters", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err, captured.err
    assert captured.err.splitlines() == [
        "gflow run: error: ran out of memory (more than the estimate before the start foresaw); "
        "ask for fewer seeds, records (--steps, --record-every, --save-points), a smaller --width "
        "or --chunk-size."
    ]


def test_library_sweep_refuses_what_cannot_fit_and_an_empty_folder_name(machine, tmp_path):
    """`gflow.sweep` itself estimates before allocating: a seed range that cannot fit is refused
    with the estimate (nothing compiled, no folder), and so is ``out=''``."""
    ds = gflow.datasets.dataset_from_options("clusters", n_per_class=10)
    small = gflow.RunConfig(dataset="clusters", width=4, steps=10, seeds="0:2")
    for bad in ("", "  "):
        with pytest.raises(ValueError, match="out must name a folder"):
            gflow.sweep(ds, small, out=bad)
    huge = gflow.RunConfig(dataset="clusters", width=4, steps=10**12, record_every=1, seeds="0:2")
    with pytest.raises(_resources.InsufficientMemory, match=r"this sweep would need about"):
        gflow.sweep(ds, huge, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()

"""The sweep engine: failures isolated per run, no retrace across hyper-parameters, sharding over
devices changes nothing, and progress is reported per chunk."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import gflow
from gflow.network import Observables
from gflow.runs import Progress, RunConfig, run_members, summarize, sweep
from gflow.solvers import NON_FINITE, OK

# The configuration of tests/test_runs.py (one compilation serves both files): SGD in float64,
# 2 learning rates × 3 seeds = 6 runs in chunks of 4.
SGD = dict(
    trainer="sgd",
    dataset="clusters",
    width=8,
    sigma=1e-3,
    momentum=0.9,
    batch=8,
    steps=300,
    record_every=30,
    seeds="0:3",
    chunk_size=4,
    dtype="float64",
)


@pytest.fixture(scope="module")
def clusters() -> gflow.Dataset:
    return gflow.load_dataset("clusters", n_samples=64, dim=8)


def test_diverging_runs_are_marked_and_the_others_are_unaffected(clusters):
    """η = 1e100 overflows the weights even in float64 (NON_FINITE); the η = 0.05 runs computed
    in the same vmapped batches are bitwise those of a sweep without the diverging point, and
    both sweeps share one compilation."""
    mixed = sweep(clusters, RunConfig(**SGD, lr=(0.05, 1e100)))
    traces = run_members._cache_size()
    calm = sweep(clusters, RunConfig(**SGD, lr=(0.05, 0.06)))
    assert run_members._cache_size() == traces  # new η values: no new trace or compilation

    assert np.all(mixed.status[0] == OK) and np.all(calm.status == OK)
    diverged = mixed.status[1] == NON_FINITE
    assert diverged.any()
    # Marked exactly where the recorded loss or norms stopped being finite.
    blown = ~np.all(np.isfinite(mixed.observables["loss"][1]), axis=-1) | ~np.all(
        np.isfinite(mixed.observables["P"][1]), axis=(-1, -2)
    )
    np.testing.assert_array_equal(diverged, blown)
    assert all("NaN or inf" in m for m in mixed.status_messages[1][diverged])
    for field in Observables._fields:
        np.testing.assert_array_equal(
            mixed.observables[field][0], calm.observables[field][0], err_msg=field
        )
    # Summaries use the successful runs only.
    summary = summarize(mixed)
    assert summary[1]["ok"] == int((~diverged).sum())
    assert summary[1]["final_loss"]["count"] == summary[1]["ok"]
    assert [f["seed"] for f in summary[1]["failed"]] == [s for s, d in zip(range(3), diverged) if d]
    assert all(
        np.isfinite(v)
        for v in (summary[0]["final_loss"]["median"], summary[0]["loss_drop_time"]["median"])
    )


_SHARDED = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    import gflow
    from gflow.runs import RunConfig, sweep
    from gflow.network import Observables
    ds = gflow.load_dataset("clusters", n_samples=64, dim=8)
    run = sweep(ds, RunConfig(**json.loads(sys.argv[1])), devices=jax.devices())
    np.savez(sys.argv[2], status=run.status, W=run.final_params.W,
             **{f: run.observables[f] for f in Observables._fields})
    print(json.dumps({"devices": len(jax.devices()), "device_count": run.manifest["device_count"],
                      "chunk_size": run.layout["chunk_size"]}))
""")


def test_sharded_over_four_devices_equals_one_device(clusters, tmp_path):
    """The seed axis split over 4 (forced host) devices gives the one-device numbers, up to float64
    rounding (each device vectorises a smaller batch, so the last bits may differ)."""
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    config = {**SGD, "lr": [0.05, 0.1]}
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED, json.dumps(config), str(tmp_path / "sharded.npz")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info == {"devices": 4, "device_count": 4, "chunk_size": 4}
    single = sweep(clusters, RunConfig(**config), devices=jax.devices()[:1])
    with np.load(tmp_path / "sharded.npz") as sharded:
        np.testing.assert_array_equal(sharded["status"], single.status)
        assert np.all(single.status == OK)
        for field in Observables._fields:
            np.testing.assert_allclose(
                sharded[field],
                single.observables[field],
                rtol=1e-9,
                atol=1e-15,
                equal_nan=True,
                err_msg=field,
            )
        np.testing.assert_allclose(sharded["W"], single.final_params.W, rtol=1e-9, atol=1e-15)


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_without_terminal_prints_plain_lines_at_most_every_few_seconds():
    clock, stream = _Clock(), io.StringIO()
    bar = Progress(10, label="sweep", stream=stream, min_interval=5.0, clock=clock)
    bar.start()
    for _ in range(10):
        clock.now += 1.5  # a chunk every 1.5 s
        bar.update()
    bar.close()
    lines = stream.getvalue().splitlines()
    # The first chunk (t = 1.5 s), then whenever 5 s have passed since the last line (t = 7.5 s,
    # 13.5 s), and the last chunk (t = 15 s).
    assert [line.split("]")[1].split()[0] for line in lines] == ["1/10", "5/10", "9/10", "10/10"]
    assert "\r" not in stream.getvalue()
    assert "1.50s/chunk" in lines[-1] and "ETA 0.0s" in lines[-1]


def test_progress_rate_and_eta():
    clock = _Clock()
    bar = Progress(4, stream=io.StringIO(), clock=clock, done_before=2)
    bar.start()
    clock.now = 10.0
    bar.update(2)
    assert bar.rate == pytest.approx(0.2) and bar.eta == pytest.approx(10.0)
    assert "4/6 chunks (2 from before)" in bar.line()


def test_progress_on_a_terminal_redraws_one_line_and_quiet_prints_nothing():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    bar = Progress(3, stream=term, clock=_Clock())
    for _ in range(3):
        bar.update()
    bar.close()
    assert term.getvalue().count("\r") == 3 and term.getvalue().endswith("\n")
    silent = io.StringIO()
    quiet = Progress(3, stream=silent, enabled=False)
    quiet.note("compiling")
    quiet.update(3)
    quiet.close()
    assert silent.getvalue() == ""


def test_activity_shows_elapsed_time_of_a_long_step_and_its_duration():
    """A step with no progress of its own (a compiled solve) is never silent: lines while it
    runs, from a background thread, then its duration; --quiet prints nothing."""
    import threading
    import time

    from gflow.runs import Activity

    stream = io.StringIO()
    beats = threading.Event()

    class Watched(io.StringIO):
        def write(self, text):
            if "running" in text:
                beats.set()
            return stream.write(text)

    with Activity("ODE solve", stream=Watched(), interval=0.01) as activity:
        assert beats.wait(timeout=30)  # the step "runs" until the thread has reported
    lines = stream.getvalue().splitlines()
    assert lines[0] == "ODE solve: started" and "elapsed" in lines[1]
    assert lines[-1].startswith("ODE solve: done in ") and activity.seconds > 0
    count = len(lines)
    time.sleep(0.05)
    assert len(stream.getvalue().splitlines()) == count  # the thread stopped with the step
    silent = io.StringIO()
    with Activity("quiet", stream=silent, interval=0.01, enabled=False):
        time.sleep(0.03)
    assert silent.getvalue() == ""

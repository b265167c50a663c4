"""Faults: a sweep killed with SIGKILL continues with --resume to the bits of an uninterrupted
sweep; a resume with another configuration, or a second sweep into a used folder, is
refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gflow.cli import main
from gflow.runs import load_run

# 32 seeds in chunks of 4: 8 chunks, each a fraction of a second, so that a kill after the first
# chunk reliably lands in the middle of the sweep.
ARGS = [
    "sweep",
    "--dataset",
    "clusters",
    "--n-per-class",
    "32",
    "--width",
    "8",
    "--sigma",
    "1e-3",
    "--lr",
    "0.02",
    "--batch",
    "8",
    "--steps",
    "1000",
    "--record-every",
    "50",
    "--seeds",
    "0:32",
    "--chunk-size",
    "4",
    "--quiet",
]
CHUNKS = 8
_CLI = "import sys; from gflow.cli import main; sys.exit(main(sys.argv[1:]))"


def _env(cache: Path) -> dict:
    # A shared persistent compilation cache: the later processes load the program the first one
    # compiled (the same executable, so the comparison below is not weakened by it).
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def _gflow(args, env, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-c", _CLI, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    env = _env(root / "jax-cache")
    proc = _gflow([*ARGS, "--out", str(root / "whole")], env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return root, env


def _chunk_dirs(folder: Path) -> list[str]:
    chunks = folder / "chunks"
    return (
        sorted(p.name for p in chunks.iterdir() if p.name.startswith("chunk-"))
        if chunks.is_dir()
        else []
    )


def test_kill_minus_nine_then_resume_is_bitwise_identical(workspace):
    root, env = workspace
    folder = root / "killed"
    proc = _gflow([*ARGS, "--out", str(folder)], env)
    first = folder / "chunks" / "chunk-00000"
    deadline = time.monotonic() + 240
    while not first.is_dir():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no chunk appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = _chunk_dirs(folder)
    assert 1 <= len(done) < CHUNKS, done  # killed mid-sweep, whole chunks only
    interrupted = load_run(folder)
    assert not interrupted.complete
    first_mtime = first.stat().st_mtime_ns

    resumed = _gflow([*ARGS, "--out", str(folder), "--resume"], env)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert "32 run(s), 32 ok" in out
    # Only the missing chunks were computed, and the finished ones were not touched.
    manifest = json.loads((folder / "manifest.json").read_text())
    # The killed invocation is recognisable as such; the folder is finished.
    assert [i["state"] for i in manifest["invocations"]] == ["killed", "finished"]
    assert manifest["state"] == "finished" and manifest["chunks_finished"] == CHUNKS
    computed = manifest["invocations"][1]["chunks_computed"]
    assert sorted(computed) == [i for i in range(CHUNKS) if f"chunk-{i:05d}" not in done]
    assert first.stat().st_mtime_ns == first_mtime
    # Bit for bit the uninterrupted sweep: every .npy file, the final weights, the loaded run.
    whole = root / "whole"
    assert _chunk_dirs(folder) == _chunk_dirs(whole) and len(_chunk_dirs(whole)) == CHUNKS
    for name in _chunk_dirs(whole):
        for npy in sorted((whole / "chunks" / name).glob("*.npy")):
            assert npy.read_bytes() == (folder / "chunks" / name / npy.name).read_bytes(), npy
    a, b = load_run(whole), load_run(folder)
    for x, y in zip(a.final_params, b.final_params):
        np.testing.assert_array_equal(x, y)
    assert a.config == b.config and np.array_equal(a.status, b.status)
    assert (folder / "report.md").is_file() and not [p for p in folder.rglob(".*")]


def test_resume_with_another_configuration_is_refused(workspace, capsys):
    root, _ = workspace
    whole = root / "whole"
    before = (whole / "manifest.json").read_bytes()
    args = [a if a != "0.02" else "0.03" for a in ARGS]
    code = main([*args, "--out", str(whole), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert (
        "cannot resume" in err
        and "different configuration" in err
        and "lr: [0.02] there, [0.03] requested" in err
    )
    assert (whole / "manifest.json").read_bytes() == before  # the folder is left as it was


def test_a_second_sweep_into_a_used_folder_is_refused(workspace, capsys):
    root, _ = workspace
    code = main([*ARGS, "--out", str(root / "whole")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert "already holds a run" in err and "--resume" in err


def test_resume_cleans_partial_chunks_and_recomputes_nothing_when_complete(workspace, tmp_path):
    root, _ = workspace
    folder = tmp_path / "copy"
    shutil.copytree(root / "whole", folder)
    # What a kill during a write leaves: a partial chunk folder and temporary files, under the
    # names gflow's writers make.
    partial = folder / "chunks" / ".partial-chunk-00003-k2x9_a0q"
    partial.mkdir()
    (partial / ".P.npy.gflow-0a1b2c3d.tmp").write_bytes(b"half")
    (folder / ".manifest.json.gflow-abcd_123.tmp").write_text("{")
    (folder / "figures" / ".loss_p0.png.gflow-zz00yy11.tmp").write_bytes(b"png")
    # A user's files that merely look temporary are never touched.
    mine = {
        folder / ".notes.tmp": b"mine",
        folder / ".manifest.json.abc.tmp": b"mine too",
        folder / "figures" / ".draft.png.tmp": b"my figure",
        folder / "chunks" / ".partial-mine": None,
    }
    for path, data in mine.items():
        path.write_bytes(data) if data is not None else path.mkdir()
    assert main([*ARGS, "--out", str(folder), "--resume"]) == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (
        manifest["invocations"][-1]["chunks_computed"] == []
        and manifest["invocations"][-1]["compile_seconds"] == 0.0
    )
    assert sorted(p for p in folder.rglob(".*")) == sorted(mine)
    assert all(data is None or path.read_bytes() == data for path, data in mine.items())

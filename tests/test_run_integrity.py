"""Run folders nothing can corrupt and readers nothing can exploit: one writer at a time (a lock),
chunk files checked against their SHA-256 and the shapes and dtypes of ``axes.json``, field
names that cannot leave the folder, a full disk and damaged metadata reported in one line, and
dead networks flagged instead of reported as successes.

One tiny sweep (16 samples, d = 4, 40 GD steps, 4 seeds in 4 chunks) serves every test.
"""

from __future__ import annotations

import contextlib
import errno
import io
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

import gflow
from gflow import _runs
from gflow.cli import main
from gflow.datasets import dataset_from_options
from gflow.runs import RunConfig, load_run, sweep
from gflow.solvers import DEAD, OK

# Full-batch GD, one run per chunk: the program of `gflow run` with the same options, so that
# one compilation serves every test of this file.
BASE = ["--dataset", "clusters", "--n-per-class", "8", "--width", "4", "--sigma", "1e-3"]
BASE += ["--trainer", "gd", "--steps", "40", "--record-every", "10", "--dtype", "float64"]
BASE += ["--quiet"]
SWEEP = ["sweep", *BASE, "--seeds", "0:4", "--chunk-size", "1", "--lr", "0.05"]
_CLI = "import sys; from gflow.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def race(tmp_path_factory) -> dict:
    """`gflow sweep --out X` in a process of its own, and, while it holds X, a second
    `gflow sweep --out X` with another η in this process."""
    shared = tmp_path_factory.mktemp("integrity") / "sweep"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    first = subprocess.Popen(
        [sys.executable, "-c", _CLI, *SWEEP, "--out", str(shared)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = shared / "gflow.lock"
    deadline = time.monotonic() + 120
    while not (lock.is_file() and f'"pid": {first.pid},' in lock.read_text()):
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the first sweep never took the lock"
        time.sleep(0.01)
    other = [a if a != "0.05" else "0.07" for a in SWEEP]
    with contextlib.redirect_stderr(io.StringIO()) as second_err:
        second = main([*other, "--out", str(shared)])
    out, err = first.communicate(timeout=300)
    return {
        "shared": shared,
        "first": (first.pid, first.returncode, err),
        "second": (second, second_err.getvalue()),
    }


@pytest.fixture(scope="module")
def folder(race) -> Path:
    """The folder the race left (η = 0.05)."""
    assert race["first"][1] == 0, race["first"][2][-3000:]
    return race["shared"]


@pytest.fixture
def copy(folder, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def _chunk_files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted((folder / "chunks").rglob("*"))
        if p.is_file()
    }


def _rewrite(chunk: Path, name: str, array: np.ndarray) -> None:
    """Replace a chunk file and its recorded checksum, as a careful forger would."""
    data = _runs.npy_bytes(array)
    (chunk / name).write_bytes(data)
    sums = json.loads((chunk / "checksums.json").read_text())
    sums["sha256"][name] = _runs.sha256(data)
    (chunk / "checksums.json").write_text(json.dumps(sums))


# --------------------------------------------------------------------------- one writer


def test_two_concurrent_sweeps_into_one_folder_one_proceeds(race):
    """Two `gflow sweep --out X` at once, with different η: the one that holds X proceeds, the
    other exits 2 with one line naming the holder of the lock; X then holds the data of X's
    configuration (that they equal the same sweep computed alone is shown by
    `test_a_full_disk_gives_one_line_and_keeps_the_written_chunks`), its manifest the one
    invocation that wrote it, and the lock is released on exit."""
    shared = race["shared"]
    pid, code, err = race["first"]
    assert code == 0, err[-3000:]
    code, err = race["second"]
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"is in use by another gflow process (pid {pid} on host " in err
    run = load_run(shared)
    assert run.config["lr"] == [0.05] and run.complete and np.all(run.status == OK)
    manifest = json.loads((shared / "manifest.json").read_text())
    assert [i["state"] for i in manifest["invocations"]] == ["finished"]
    assert manifest["invocations"][0]["writer"]["pid"] == pid
    assert manifest["state"] == "finished" and manifest["chunks_finished"] == 4
    with _runs.lock_folder(shared):  # released when its process ended
        pass


def run_dataset(config: RunConfig | None = None) -> gflow.Dataset:
    """The data of a configuration (default: the 16 samples of `BASE`)."""
    options = (
        config.data_options() if config is not None else {"dataset": "clusters", "n_per_class": 8}
    )
    return dataset_from_options(**options)


def resume(folder: Path) -> gflow.runs.Run:
    """`gflow sweep --resume` of ``folder`` without its figures (`sweep(..., resume=True)`)."""
    config = RunConfig.from_mapping(json.loads((folder / "config.json").read_text()))
    return sweep(run_dataset(config), config, out=folder, resume=True, report=False)


def test_a_held_lock_refuses_and_a_stale_one_is_taken_over(copy, capsys):
    """While a process holds the folder, a sweep into it exits 2 naming that process; a lock
    file left by a process that has gone (its pid, host and time still written in it) no longer
    locks anything."""
    before = _chunk_files(copy)
    with _runs.lock_folder(copy):
        assert main([*SWEEP, "--out", str(copy), "--resume"]) == 2
        err = _one_line(capsys)
        assert f"in use by another gflow process (pid {os.getpid()} on host " in err
        assert str(copy / "gflow.lock") in err
        with pytest.raises(_runs.FolderInUseError, match="in use by another gflow process"):
            sweep(run_dataset(), RunConfig(trainer="gd", steps=4, record_every=2), out=copy)
    stale = {"pid": 2**22 + 12345, "host": "gone", "started": "2020-01-01T00:00:00.000+00:00"}
    (copy / "gflow.lock").write_text(json.dumps(stale))
    assert resume(copy).complete
    assert _chunk_files(copy) == before


# --------------------------------------------------------------------------- config.json gone


def test_resume_of_a_folder_without_config_json_is_refused(copy, capsys):
    """Chunks whose config.json is gone are neither continued (with other values) nor reused:
    one line, exit 2, nothing changed."""
    (copy / "config.json").unlink()
    before = _chunk_files(copy), (copy / "manifest.json").read_bytes()
    for extra in (["--resume"], []):
        args = [a if a != "0.05" else "0.07" for a in SWEEP]
        assert main([*args, *extra, "--out", str(copy)]) == 2
        err = _one_line(capsys)
        assert "holds 4 chunk(s) but no config.json" in err
        assert ("cannot resume" if extra else "cannot write to") in err
    assert (_chunk_files(copy), (copy / "manifest.json").read_bytes()) == before
    assert not (copy / "config.json").exists()


# --------------------------------------------------------------------------- chunk integrity


def test_a_flipped_byte_is_detected_named_refused_and_recomputed(folder, copy, capsys):
    """Two bytes flipped in a chunk's P.npy: load_run raises naming the file, gflow figures
    refuses with one line, and --resume names it, recomputes that chunk, and gets the bytes
    that were written."""
    target = copy / "chunks" / "chunk-00001" / "P.npy"
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF
    data[-9] ^= 0x01
    target.write_bytes(bytes(data))
    np.load(target)  # still a well-formed .npy: only the checksum can tell
    with pytest.raises(ValueError, match="SHA-256") as info:
        load_run(copy)
    assert str(target) in str(info.value)
    assert main(["figures", str(copy), "--quiet"]) == 2
    err = _one_line(capsys)
    assert str(target) in err and "corrupt" in err
    assert resume(copy).complete
    err = capsys.readouterr().err
    assert str(target) in err and "Recomputing chunk 1" in err
    assert _chunk_files(copy) == _chunk_files(folder)
    manifest = json.loads((copy / "manifest.json").read_text())
    last = manifest["invocations"][-1]
    assert last["chunks_computed"] == [1] and last["chunks_discarded"][0]["chunk"] == 1


def test_every_chunk_file_has_a_checksum(folder, copy):
    """checksums.json holds the SHA-256 of every file of its chunk; a chunk without it cannot be
    verified and is refused."""
    (copy / "chunks" / "chunk-00002" / "checksums.json").unlink()
    with pytest.raises(ValueError, match=r"chunk-00002 has no checksums\.json"):
        load_run(copy)
    layout = json.loads((folder / "axes.json").read_text())
    for chunk in sorted((folder / "chunks").iterdir()):
        sums = json.loads((chunk / "checksums.json").read_text())["sha256"]
        names = {f"{f}.npy" for f in layout["fields"]} | {"params_final.npz"}
        assert set(sums) == names
        for name, digest in sums.items():
            assert _runs.sha256((chunk / name).read_bytes()) == digest


def test_shapes_and_dtypes_are_checked_against_axes_json(copy):
    """A P.npy of one neuron where axes.json says 4, and a float status.npy of 0.7 (which would
    read as status 0, "ok"), are refused even with matching checksums."""
    chunk = copy / "chunks" / "chunk-00000"
    good = {name: np.load(chunk / name) for name in ("P.npy", "status.npy")}
    _rewrite(chunk, "P.npy", good["P.npy"][..., :1])
    with pytest.raises(ValueError, match=r"P\.npy holds float64 \[1, 5, 1\] where axes.json gives "
                       r"float64 \[1, 5, 4\]"):  # fmt: skip
        load_run(copy)
    _rewrite(chunk, "P.npy", good["P.npy"])
    _rewrite(chunk, "status.npy", np.full(1, 0.7))
    with pytest.raises(ValueError, match=r"status\.npy holds float64 \[1\] where axes.json gives "
                       r"int32 \[1\]"):  # fmt: skip
        load_run(copy)
    _rewrite(chunk, "status.npy", good["status.npy"])
    assert load_run(copy).complete


def test_axes_json_cannot_reach_outside_the_run_folder(copy, tmp_path):
    """A field named ../../x is refused before any file is opened; a chunk folder that is a
    link to elsewhere is refused too."""
    outside = tmp_path / "x.npy"
    np.save(outside, np.zeros((1, 5)))
    layout = json.loads((copy / "axes.json").read_text())
    evil = {**layout, "fields": {**layout["fields"], "../../x": layout["fields"]["loss"]}}
    (copy / "axes.json").write_text(json.dumps(evil))
    with pytest.raises(ValueError, match=r"fields name '\.\./\.\./x' is not an identifier"):
        load_run(copy)
    assert main(["figures", str(copy), "--quiet"]) == 2
    (copy / "axes.json").write_text(json.dumps(layout))
    elsewhere = tmp_path / "elsewhere"
    shutil.move(copy / "chunks" / "chunk-00001", elsewhere)
    (copy / "chunks" / "chunk-00001").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="outside the run folder"):
        load_run(copy)


# --------------------------------------------------------------------------- faults


def test_a_full_disk_gives_one_line_and_keeps_the_written_chunks(folder, copy, capsys, monkeypatch):
    """ENOSPC while chunk 1 is written: exit 2, one line without a traceback, chunk 0 kept,
    the manifest says failed; a later --resume finishes with the bytes of an undisturbed
    sweep and records "finished"."""
    shutil.rmtree(copy)
    real = _runs.write_bytes_atomic

    def full_disk(path, data):
        if "chunk-00001" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)

    monkeypatch.setattr(_runs, "write_bytes_atomic", full_disk)
    assert main([*SWEEP, "--out", str(copy)]) == 2
    err = _one_line(capsys)
    assert "No space left on device (errno 28)" in err and "chunk-00001" in err
    assert "1 chunk(s) already written are kept" in err and "--resume" in err
    assert sorted(p.name for p in (copy / "chunks").iterdir()) == ["chunk-00000"]
    # Then the sweep alone, resumed: the very bytes of the folder the race left.
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["state"] == "failed" and "errno 28" in manifest["invocations"][0]["error"]
    monkeypatch.setattr(_runs, "write_bytes_atomic", real)
    assert resume(copy).complete
    assert _chunk_files(copy) == _chunk_files(folder)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert [i["state"] for i in manifest["invocations"]] == ["failed", "finished"]
    assert manifest["state"] == "finished"


def test_sigterm_ends_a_sweep_like_sigint(copy, capsys, monkeypatch):
    """SIGTERM (a scheduler's stop, `kill`) arriving while chunk 2 is written: one line on
    stderr, exit 128 + 15, every finished chunk kept, and the manifest says the invocation was
    interrupted, and by which signal."""
    for index in (2, 3):
        shutil.rmtree(copy / "chunks" / f"chunk-0000{index}")
    real = _runs.write_chunk

    def then_sigterm(path, index, arrays, params):
        written = real(path, index, arrays, params)
        os.kill(os.getpid(), signal.SIGTERM)  # handled at once, in this thread
        return written

    monkeypatch.setattr(_runs, "write_chunk", then_sigterm)
    assert main([*SWEEP, "--out", str(copy), "--resume"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.splitlines() == [
        "gflow sweep: interrupted by SIGTERM; finished chunks are kept (continue with --resume)"
    ]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is put back
    assert sorted(p.name for p in (copy / "chunks").iterdir())[-1] == "chunk-00002"
    manifest = json.loads((copy / "manifest.json").read_text())
    invocation = manifest["invocations"][-1]
    assert manifest["state"] == invocation["state"] == "interrupted"
    assert invocation["signal"] == "SIGTERM" and invocation["ended"] is not None
    assert manifest["chunks_finished"] == 3 and not load_run(copy).complete


@pytest.mark.parametrize("text", ["[1, 2]", '"manifest"', "null"])
def test_a_manifest_that_is_not_an_object_gives_one_line(copy, capsys, text):
    (copy / "manifest.json").write_text(text)
    with pytest.raises(ValueError, match="not an object"):
        load_run(copy)
    for args in (["figures", str(copy)], [*SWEEP, "--out", str(copy), "--resume"]):
        assert main(args) == 2
        assert "manifest.json (manifest) is corrupt" in _one_line(capsys)


# --------------------------------------------------------------------------- dead networks


def test_a_dead_network_is_flagged_and_healthy_ones_are_not(capsys, tmp_path):
    """GD with η = 20 on this problem switches every ReLU off on every sample: the gradient then
    vanishes and the loss stays ln 2. Such runs get status DEAD, exactly where the recorded
    gates (the observable `active`) are all closed at the end; η = 0.05 in the same vmapped
    setting stays OK. `gflow run` of a dead network exits 1 and says so."""
    config = RunConfig(
        trainer="gd", dataset="clusters", n_per_class=8, width=4, sigma=1e-3, lr=(0.05, 20.0),
        steps=40, record_every=10, seeds="0:2", chunk_size=1, dtype="float64",
    )  # fmt: skip
    run = sweep(run_dataset(config), config)  # one run per chunk: gflow run's program below
    assert run.status.tolist() == [[OK] * 2, [DEAD] * 2]
    closed = np.all(run.observables["active"][..., -1, :] == 0, axis=-1)
    np.testing.assert_array_equal(closed, run.status == DEAD)
    np.testing.assert_allclose(run.observables["loss"][1, :, -1], np.log(2.0), rtol=1e-12)
    assert "dead network" in run.status_messages[1, 0]
    assert main(["run", *BASE, "--lr", "20", "--out", str(tmp_path / "dead")]) == 1
    out = capsys.readouterr().out
    assert "0 ok" in out and "dead network" in out

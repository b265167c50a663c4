"""Run folders: what a run or sweep leaves on disk, written so that nothing is lost, and read back.

A run folder holds ``config.json`` (the resolved `RunConfig`), ``axes.json`` (the plan and every
field's axes, shape and dtype), ``t.npy``, ``manifest.json``, the lock ``gflow.lock``, one
``chunks/chunk-NNNNN/`` folder per finished chunk of members (``m = point · S + seed_index``)
with its ``checksums.json`` (SHA-256), ``summary.json``, ``figures/`` and ``report.md``. Every
file is written atomically (``os.replace``); every chunk read back is checked against its
checksums and ``axes.json``. Layout, lock, checksums, resume and status codes:
docs/run_folders.md.

Example:
    >>> run = load_run("gflow-out/sweep")  # doctest: +SKIP
    >>> run.observables["P"].shape, run.axes["P"]  # doctest: +SKIP
    ((2, 64, 301, 50), ('point', 'seed', 'time', 'neuron'))
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import re
import shutil
import socket
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ._data import dataset_from_options
from ._network import Params
from ._observables import Observables, balance_drift, training_data
from ._race import MIN_LOSS_FALL, loss_drop, race_winners
from ._trajectory import OK, STATUS_MESSAGES

FORMAT = "gflow-run-1"
NOT_RUN = -1
NOT_RUN_MESSAGE = "not computed: the sweep stopped before this chunk (continue it with --resume)"
CHUNKS = "chunks"
LOCK = "gflow.lock"
CHECKSUMS = "checksums.json"
PARAMS_FILE = "params_final.npz"
_PARTIAL = ".partial-"
_PARAM_FIELDS = ("W", "b", "V")
# The temporary names gflow's writers make, and nothing else: `write_bytes_atomic`'s
# ``.<target>.gflow-<random>.tmp`` and `write_chunk`'s ``.partial-chunk-NNNNN-<random>``
# (<random>: the eight random characters tempfile adds).
_TMP_TAG = ".gflow-"
_OWN_TMP = re.compile(r"\.(?P<target>.+)\.gflow-[a-z0-9_]{8}\.tmp")
_OWN_PARTIAL = re.compile(r"\.partial-chunk-\d{5,}-[a-z0-9_]{8}")
_ROOT_FILES = ("config.json", "axes.json", "manifest.json", "t.npy", "summary.json", "report.md")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WINNER_SHARE = 0.9


def _mode(full: int) -> int:
    """``full`` (0o666 / 0o777) less the process umask, as ``open``/``mkdir`` would apply it."""
    current = os.umask(0)
    os.umask(current)
    return full & ~current


_FILE_MODE = _mode(0o666)
_DIR_MODE = _mode(0o777)


# --------------------------------------------------------------------------- atomic files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunFolderWriteError(ValueError):
    """A file of a run folder could not be written (a full disk, a quota, a vanished folder).

    Raised by `write_bytes_atomic` in place of the ``OSError``; ``errno`` is the OS's code
    (28 = ENOSPC, no space left on device). The file is left as it was before the write.
    """

    def __init__(self, message: str, code: int | None):
        super().__init__(message)
        self.errno = code


def write_bytes_atomic(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, replace.

    The temporary file is ``.<name>.gflow-<random>.tmp``, a name only gflow makes
    (`remove_partial_chunks` removes these and nothing else). An ``OSError`` (e.g. ENOSPC)
    becomes a `RunFolderWriteError` naming the file and the reason.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP_TAG}", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; a run folder is meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        code = f" (errno {err.errno})" if err.errno is not None else ""
        raise RunFolderWriteError(
            f"cannot write {path}: {err.strerror or err}{code}", err.errno
        ) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path, obj) -> Path:
    return write_bytes_atomic(
        path, (json.dumps(obj, indent=2, allow_nan=True, ensure_ascii=False) + "\n").encode()
    )


def write_text_atomic(path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def npy_bytes(array) -> bytes:
    """The ``.npy`` file of ``array`` (no pickles)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(**arrays) -> bytes:
    """The ``.npz`` file of ``arrays`` (no pickles)."""
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **{k: np.asarray(v) for k, v in arrays.items()})
    return buffer.getvalue()


def write_npy_atomic(path, array) -> Path:
    return write_bytes_atomic(path, npy_bytes(array))


def write_npz_atomic(path, **arrays) -> Path:
    return write_bytes_atomic(path, npz_bytes(**arrays))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_json(path: Path, what: str) -> dict:
    """A JSON object file of a run folder; ``ValueError`` naming it if missing, unreadable,
    or not an object."""
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"{path.parent} is not a gflow run folder: {path.name} ({what}) is missing."
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} ({what}) is corrupt: {err}") from None
    except OSError as err:
        raise ValueError(f"cannot read {path} ({what}): {err.strerror or err}") from None
    if not isinstance(obj, dict):
        raise ValueError(
            f"{path} ({what}) is corrupt: it holds a JSON {type(obj).__name__}, not an object."
        )
    return obj


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"run folder chunk file is missing: {path}") from None
    except OSError as err:
        raise ValueError(f"cannot read run folder file {path}: {err.strerror or err}") from None


def _parse_npy(path: Path, data: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"run folder chunk file {path} is corrupt: {err}") from None


def _load_npy(path: Path) -> np.ndarray:
    return _parse_npy(path, _read_file(path))


def _check_array(path: Path, a: np.ndarray, shape: tuple, dtype: str) -> np.ndarray:
    """``a`` if it has the shape and dtype that ``axes.json`` gives it; else ``ValueError``."""
    if a.shape != tuple(shape) or a.dtype != np.dtype(dtype):
        raise ValueError(
            f"run folder file {path} holds {a.dtype.name} {list(a.shape)} where axes.json "
            f"gives {np.dtype(dtype).name} {list(shape)}."
        )
    return a


# --------------------------------------------------------------------------- folder life cycle


def now() -> str:
    """UTC timestamp, ISO 8601 to the millisecond."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def versions() -> dict:
    """Versions of gflow and the libraries its numbers depend on."""
    out = {}
    for name in ("gflow", "jax", "jaxlib", "optax", "diffrax", "equinox", "numpy", "matplotlib"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def dataset_fingerprint(dataset) -> str:
    """SHA-256 of a dataset's arrays (train and test): equal numbers ⇔ equal fingerprint."""
    h = hashlib.sha256()
    for a in (dataset.x, dataset.y, dataset.x_test, dataset.y_test):
        if a is not None:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def is_run_folder(path) -> bool:
    return (Path(path) / "config.json").is_file()


def create_run_folder(path) -> Path:
    """Create the folder ``path`` (and parents) for a run; ``ValueError`` if that is impossible."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"output folder {out} exists and is a file, not a folder; choose another out."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / CHUNKS).mkdir(exist_ok=True)
        (out / "figures").mkdir(exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(
            f"cannot create output folder {out}: a file is in the way on that path."
        ) from None
    except OSError as err:
        raise ValueError(f"cannot create output folder {out}: {err.strerror}.") from None
    probe = out / f".write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"output folder {out} is not writable: {err.strerror}.") from None
    return out


def is_own_temporary(folder: str, name: str) -> bool:
    """``name`` is a temporary name gflow's own writers make in ``folder`` (``"root"``,
    ``"figures"`` or ``"chunks"`` of a run folder): an atomic write of one of gflow's files
    (``.<target>.gflow-<random>.tmp``) or a chunk being assembled. A user's ``.notes.tmp`` is
    not."""
    if folder == CHUNKS:
        return _OWN_PARTIAL.fullmatch(name) is not None
    match = _OWN_TMP.fullmatch(name)
    if match is None:
        return False
    target = match.group("target")
    return target in _ROOT_FILES if folder == "root" else target.endswith(".png")


def remove_partial_chunks(path) -> list[str]:
    """Delete what a killed gflow process can leave, and only that: partial chunk folders and
    the temporary files of gflow's atomic writes (`is_own_temporary`)."""
    root = Path(path)
    removed = []
    chunk_dir = root / CHUNKS
    if chunk_dir.is_dir():
        for p in chunk_dir.iterdir():
            if p.is_dir() and is_own_temporary(CHUNKS, p.name):
                shutil.rmtree(p)
                removed.append(p.name)
    for kind, folder in (("root", root), ("figures", root / "figures")):
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_file() and is_own_temporary(kind, p.name):
                    p.unlink()
                    removed.append(p.name)
    return removed


# --------------------------------------------------------------------------- one writer


class FolderInUseError(ValueError):
    """Another process holds the run folder's lock (`lock_folder`)."""


@dataclasses.dataclass
class FolderLock:
    """The lock of a run folder, held until `release` (or until the process ends)."""

    path: Path
    fd: int | None

    def release(self) -> None:
        """Give the folder back (idempotent); the lock file stays, emptied."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # the lock itself goes with the descriptor below; the text is only a label
        finally:
            os.close(fd)  # releases the flock

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(text: str) -> str:
    """``pid 1234 on host h since 2026-...`` from a lock file's text (``""`` if unreadable)."""
    try:
        who = json.loads(text)
        return f"pid {int(who['pid'])} on host {who['host']} since {who['started']}"
    except (ValueError, KeyError, TypeError):
        return ""


def lock_folder(path) -> FolderLock:
    """Hold the run folder ``path`` (which must exist) for this process, or raise
    `FolderInUseError` naming the process that holds it.

    The lock is an exclusive, non-blocking ``flock`` on ``path/gflow.lock``. Why ``flock``
    rather than a pid file: the kernel drops the lock when the holding process ends, however
    it ends (exit, exception, SIGKILL, crash), so a lock is never left stale, and nothing has to
    guess whether a recorded pid is still alive (pids are reused, and a pid on another host
    cannot be checked at all). A lock file left by a dead process is therefore simply stale and
    taken over. On NFS, Linux maps ``flock`` onto byte-range locks that the server arbitrates
    between hosts. The holder writes its pid, host and start time into the file; that text only
    names the holder in the refusal, it never decides anything. The file is never deleted
    (deleting it would let a second process lock a new file while a third still holds the
    old one).
    """
    import fcntl  # POSIX only; imported here so that reading a run folder needs no locks

    lock = Path(path) / LOCK
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    except OSError as err:
        raise ValueError(f"cannot create the lock file {lock}: {err.strerror or err}.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        os.close(fd)
        if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):  # held elsewhere
            holder = lock_holder(text) or "a process that has not recorded itself yet"
            raise FolderInUseError(
                f"output folder {path} is in use by another gflow process ({holder}; lock "
                f"{lock}): wait for it to finish, or choose another output folder."
            ) from None
        raise ValueError(
            f"cannot lock output folder {path}: {err.strerror or err} (its filesystem does not "
            "support file locks)."
        ) from None
    who = {"pid": os.getpid(), "host": socket.gethostname(), "started": now()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(who) + "\n").encode(), 0)
    return FolderLock(lock, fd)


# --------------------------------------------------------------------------- chunks


def chunk_name(index: int) -> str:
    return f"chunk-{index:05d}"


def finished_chunks(path, n_chunks: int) -> list[int]:
    """Indices of the chunks whose folders are complete on disk (not verified: `verify_chunks`)."""
    chunk_dir = Path(path) / CHUNKS
    return [i for i in range(n_chunks) if (chunk_dir / chunk_name(i)).is_dir()]


def write_chunk(
    path, index: int, arrays: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray]
) -> Path:
    """Write one finished chunk: every field as ``.npy``, final params as ``.npz``, then the
    SHA-256 of each file's bytes in ``checksums.json``; the chunk folder appears under its
    final name only once everything is on disk."""
    chunk_dir = Path(path) / CHUNKS
    final = chunk_dir / chunk_name(index)
    if final.exists():
        raise ValueError(f"chunk {final} already exists; a finished chunk is never rewritten.")
    try:
        partial = Path(tempfile.mkdtemp(prefix=f"{_PARTIAL}{chunk_name(index)}-", dir=chunk_dir))
    except OSError as err:
        raise RunFolderWriteError(
            f"cannot write chunk {final}: {err.strerror or err} (errno {err.errno})", err.errno
        ) from None
    try:
        files = {f"{name}.npy": npy_bytes(a) for name, a in arrays.items()}
        files[PARAMS_FILE] = npz_bytes(**params)
        for name, data in files.items():
            write_bytes_atomic(partial / name, data)
        checksums = {"sha256": {name: sha256(data) for name, data in files.items()}}
        write_json_atomic(partial / CHECKSUMS, checksums)
        os.chmod(partial, _DIR_MODE)
        _fsync_dir(partial)
        os.replace(partial, final)
        _fsync_dir(chunk_dir)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise RunFolderWriteError(
            f"cannot write chunk {final}: {err.strerror or err} (errno {err.errno})", err.errno
        ) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def _inside(root: Path, file: Path) -> Path:
    """``file`` if it resolves to a path inside ``root``; else ``ValueError``."""
    if not file.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"run folder file {file} resolves to a path outside the run folder.")
    return file


def _verified_bytes(root: Path, folder: Path, name: str, checksums: Mapping) -> bytes:
    path = _inside(root, folder / name)
    data = _read_file(path)
    recorded = checksums.get(name)
    if recorded is None:
        raise ValueError(f"run folder chunk file {path} has no checksum in {CHECKSUMS}.")
    if sha256(data) != recorded:
        raise ValueError(
            f"run folder chunk file {path} is corrupt: its bytes differ from those written "
            "(SHA-256 mismatch)."
        )
    return data


def read_chunk(path, index: int, layout: dict) -> tuple[dict, dict]:
    """The arrays of chunk ``index`` (fields by name; final params W, b, V).

    Every file is checked against the SHA-256 recorded in the chunk's ``checksums.json`` and
    against the shape ``[members of the chunk, *shape]`` and dtype of ``layout``; ``ValueError``
    names the first file that differs.
    """
    root = Path(path)
    folder = _inside(root, root / CHUNKS / chunk_name(index))
    if not (folder / CHECKSUMS).is_file():
        raise ValueError(
            f"run folder chunk {folder} has no {CHECKSUMS}, so its files cannot be verified "
            "(damaged, or written by a gflow that did not record checksums)."
        )
    recorded = read_json(folder / CHECKSUMS, "checksums of the chunk's files").get("sha256")
    if not isinstance(recorded, dict):
        raise ValueError(f"{folder / CHECKSUMS} is corrupt: it has no 'sha256' object.")
    start, stop = layout["chunks"][index]
    arrays = {}
    for name, spec in layout["fields"].items():
        file = folder / f"{name}.npy"
        a = _parse_npy(file, _verified_bytes(root, folder, file.name, recorded))
        arrays[name] = _check_array(file, a, (stop - start, *spec["shape"]), spec["dtype"])
    file = folder / PARAMS_FILE
    data = _verified_bytes(root, folder, PARAMS_FILE, recorded)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            params = {k: z[k] for k in _PARAM_FIELDS}
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"run folder chunk file {file} is corrupt: {err}") from None
    for name, spec in layout["final_params"].items():
        _check_array(file, params[name], (stop - start, *spec["shape"]), spec["dtype"])
    return arrays, params


def verify_chunks(path, layout: dict) -> tuple[list[int], dict[int, str]]:
    """``(sound, corrupt)``: the chunks on disk that read back intact (`read_chunk`), and for
    each one that does not, why."""
    sound, corrupt = [], {}
    for i in finished_chunks(path, len(layout["chunks"])):
        try:
            read_chunk(path, i, layout)
        except ValueError as err:
            corrupt[i] = str(err)
        else:
            sound.append(i)
    return sound, corrupt


def check_layout(layout: dict, where: Path) -> dict:
    """``layout`` (the object of ``axes.json`` at ``where``) if it is one this gflow can read:
    its format, every field gflow records with identifier-like names, shapes and dtypes, and
    chunks that tile the members; else ``ValueError`` naming the problem."""

    def bad(problem: str) -> ValueError:
        return ValueError(f"{where} is corrupt: {problem}.")

    if layout.get("format") != FORMAT:
        raise ValueError(
            f"{where} has format {layout.get('format')!r}; this gflow reads {FORMAT!r}."
        )
    for key, kind in (("points", list), ("seeds", list), ("chunks", list), ("fields", dict)):
        if not isinstance(layout.get(key), kind):
            raise bad(f"'{key}' is missing or not a {kind.__name__}")
    if not isinstance(layout.get("final_params"), dict):
        raise bad("'final_params' is missing or not an object")
    for group in ("fields", "final_params"):
        for name, spec in layout[group].items():
            if not isinstance(name, str) or _FIELD_NAME.fullmatch(name) is None:
                raise bad(f"{group} name {name!r} is not an identifier")
            try:
                ok = all(isinstance(n, int) and n >= 0 for n in spec["shape"])
                np.dtype(spec["dtype"])
            except (TypeError, KeyError, ValueError):
                ok = False
            if not ok:
                raise bad(f"{group} entry {name!r} has no valid shape and dtype")
    missing = [
        f for f in (*Observables._fields, "status", "num_steps") if f not in layout["fields"]
    ]
    missing += [f for f in _PARAM_FIELDS if f not in layout["final_params"]]
    if missing:
        raise bad(f"it lacks the field(s) {', '.join(missing)}")
    members, edge = len(layout["points"]) * len(layout["seeds"]), 0
    for chunk in layout["chunks"]:
        if not (
            isinstance(chunk, list)
            and len(chunk) == 2
            and all(isinstance(c, int) for c in chunk)
            and chunk[0] == edge < chunk[1]
        ):
            raise bad(f"chunk {chunk!r} does not continue the members at {edge}")
        edge = chunk[1]
    if edge != members:
        raise bad(f"its chunks cover {edge} members, not the {members} of the plan")
    return layout


# --------------------------------------------------------------------------- the loaded run


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """A run or sweep, stacked by field with named axes.

    Attributes:
        path: the run folder (None for a sweep kept in memory).
        config: the resolved configuration (`RunConfig.to_dict`).
        manifest: versions, devices, dataset, invocations and timings.
        layout: the plan of ``axes.json``.
        points: the hyper-parameter points ``[{"sigma", "lr", "momentum"}, ...]``.
        seeds: ``[seed]`` int array.
        t: flow time of each record ``[point, time]``.
        observables: field name → array ``[point, seed, time(, neuron)]``.
        axes: axis names of every array of ``observables`` and of ``t``, ``status`` and
            ``num_steps``, e.g. ``axes["P"] == ("point", "seed", "time", "neuron")``.
        final_params: `Params` of arrays ``[point, seed, neuron, ...]``.
        param_axes: axis names of ``final_params`` (``W``, ``b``, ``V``); kept apart from
            ``axes`` because the observable ``b`` [point, seed, time, neuron] and the final
            bias ``b`` [point, seed, neuron] share a name.
        status: ``[point, seed]`` int32 (`gflow` status codes; −1 = not computed yet).
        num_steps: ``[point, seed]`` solver or optimiser steps.
    """

    path: Path | None
    config: dict
    manifest: dict
    layout: dict
    points: list
    seeds: np.ndarray
    t: np.ndarray
    observables: dict
    axes: dict
    final_params: Params
    param_axes: dict
    status: np.ndarray
    num_steps: np.ndarray

    @property
    def ok(self) -> np.ndarray:
        """``[point, seed]``: the run finished cleanly (only these enter summaries)."""
        return self.status == OK

    @property
    def complete(self) -> bool:
        """Every chunk of the plan is on disk."""
        return bool(np.all(self.status != NOT_RUN))

    @property
    def status_messages(self) -> np.ndarray:
        """``[point, seed]`` human-readable status of each run."""
        return np.vectorize(status_text, otypes=[object])(self.status)

    def observables_of(self, point: int, seed_index: int) -> Observables:
        """The `Observables` (NumPy, leading time axis) of one run."""
        return Observables(
            **{f: self.observables[f][point, seed_index] for f in Observables._fields}
        )

    def seed_index(self, seed: int) -> int:
        """Position of ``seed`` on the seed axis; ``ValueError`` if the run has no such seed."""
        hits = np.flatnonzero(self.seeds == int(seed))
        if hits.size == 0:
            shown = ", ".join(str(int(s)) for s in self.seeds[:20])
            more = ", ..." if self.seeds.size > 20 else ""
            raise ValueError(f"seed {seed} is not in this run; its seeds are {shown}{more}.")
        return int(hits[0])

    def params_of(self, point: int, seed: int) -> Params:
        """Final `Params` (NumPy) of the run of ``point`` (index) and ``seed`` (the seed itself).

        Raises ``ValueError`` for a point or seed the run does not have, or a run that did not
        finish cleanly (its final weights are NaN or not valid).
        """
        if not (isinstance(point, (int, np.integer)) and 0 <= point < len(self.points)):
            labels = "; ".join(f"{i}: {point_label(q)}" for i, q in enumerate(self.points))
            raise ValueError(
                f"point must be an index in [0, {len(self.points)}) ({labels}); got {point!r}."
            )
        s = self.seed_index(seed)
        if not self.ok[point, s]:
            raise ValueError(
                f"the run of point {point} ({point_label(self.points[point])}), seed {seed} did "
                f"not finish cleanly: {status_text(self.status[point, s])}"
            )
        # Params of NumPy arrays: a loaded run lives in host memory.
        return Params(*(np.asarray(a[point, s]) for a in self.final_params))  # pyright: ignore[reportArgumentType]

    def to_xarray(self):
        """The run as an ``xarray.Dataset`` with named dimensions (needs the optional xarray).

        Data variables: every observable ``[point, seed, time(, neuron)]``, ``t [point, time]``,
        ``status`` and ``num_steps [point, seed]``, and the final weights as ``final_W``,
        ``final_b``, ``final_V``. Coordinates: ``seed`` (the seeds), ``point`` (index) with
        ``sigma``, ``lr``, ``momentum`` along it, and ``neuron``.

        Example:
            >>> ds = gflow.load_run("gflow-out/sweep").to_xarray()  # doctest: +SKIP
            >>> ds.P.sel(seed=3).isel(point=0).plot.line(x="time")  # doctest: +SKIP
        """
        try:
            import xarray  # pyright: ignore[reportMissingImports]  (optional extra)
        except ImportError:
            raise ImportError(
                "Run.to_xarray needs xarray, an optional extra of gflow: "
                "pip install 'gflow[xarray]' (or pip install xarray)."
            ) from None
        arrays = {name: (self.axes[name], a) for name, a in self.observables.items()}
        arrays.update(
            t=(self.axes["t"], self.t),
            status=(self.axes["status"], self.status),
            num_steps=(self.axes["num_steps"], self.num_steps),
        )
        for name, a in zip(_PARAM_FIELDS, self.final_params):
            arrays[f"final_{name}"] = (self.param_axes[name], np.asarray(a))

        def column(key):
            return [np.nan if q.get(key) is None else float(q[key]) for q in self.points]

        coords = {
            "point": np.arange(len(self.points)),
            "seed": self.seeds,
            "neuron": np.arange(self.final_params.W.shape[2]),
            "sigma": ("point", column("sigma")),
            "lr": ("point", column("lr")),
            "momentum": ("point", column("momentum")),
        }
        attrs = {"path": "" if self.path is None else str(self.path), "format": FORMAT}
        return xarray.Dataset(arrays, coords=coords, attrs=attrs)


def status_text(code: int) -> str:
    """Message of a status code, including −1 (not computed yet)."""
    code = int(code)
    if code == NOT_RUN:
        return NOT_RUN_MESSAGE
    return STATUS_MESSAGES.get(code, f"unknown status {code}")


def assemble_run(
    path, config: dict, manifest: dict, layout: dict, t: np.ndarray, chunks: Mapping[int, tuple]
) -> Run:
    """Stack chunk arrays (member axis) into ``[point, seed, ...]``; absent chunks give NaN/−1."""
    n_points, n_seeds = len(layout["points"]), len(layout["seeds"])
    members = n_points * n_seeds

    def empty(spec):
        dtype = np.dtype(spec["dtype"])
        fill = np.nan if np.issubdtype(dtype, np.floating) else 0
        return np.full((members, *spec["shape"]), fill, dtype)

    fields = {name: empty(spec) for name, spec in layout["fields"].items()}
    params = {name: empty(spec) for name, spec in layout["final_params"].items()}
    fields["status"][:] = NOT_RUN
    for index, (arrays, chunk_params) in chunks.items():
        start, stop = layout["chunks"][index]
        for name, a in arrays.items():
            fields[name][start:stop] = a[: stop - start]
        for name, a in chunk_params.items():
            params[name][start:stop] = a[: stop - start]

    def stacked(a):
        return a.reshape(n_points, n_seeds, *a.shape[1:])

    observables = {f: stacked(fields[f]) for f in Observables._fields}
    axes = {name: ("point", "seed", *spec["axes"][1:]) for name, spec in layout["fields"].items()}
    axes["t"] = ("point", "time")
    param_axes = {
        name: ("point", "seed", *spec["axes"][1:]) for name, spec in layout["final_params"].items()
    }
    return Run(
        path=None if path is None else Path(path),
        config=dict(config),
        manifest=dict(manifest),
        layout=dict(layout),
        points=list(layout["points"]),
        seeds=np.asarray(layout["seeds"], dtype=np.int64),
        t=np.asarray(t),
        observables=observables,
        axes=axes,
        # Params of NumPy arrays [point, seed, ...]: host memory, not device arrays.
        final_params=Params(**{k: stacked(params[k]) for k in _PARAM_FIELDS}),  # pyright: ignore[reportArgumentType]
        param_axes=param_axes,
        status=stacked(fields["status"]).astype(np.int32),
        num_steps=stacked(fields["num_steps"]),
    )


def load_run(path) -> Run:
    """Read a run folder back: configuration, manifest, observables stacked by field with named
    axes ``(point, seed, time, neuron)``, final parameters and per-run status.

    Works on an unfinished sweep too: runs of chunks not on disk have status −1 and NaN fields.

    Raises:
        ValueError: ``path`` is not a gflow run folder, or one of its files is corrupt: a chunk
            file whose bytes differ from those written (its SHA-256), an array whose shape or
            dtype is not the one of ``axes.json``, a field name that is not an identifier.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"run folder not found: {root}")
    config = read_json(root / "config.json", "configuration")
    layout = check_layout(read_json(root / "axes.json", "axes and fields"), root / "axes.json")
    manifest = read_json(root / "manifest.json", "manifest")
    t = _load_npy(root / "t.npy")
    records = layout["fields"]["loss"]["shape"][:1]
    t = _check_array(root / "t.npy", t, (len(layout["points"]), *records), t.dtype.str)
    done = finished_chunks(root, len(layout["chunks"]))
    chunks = {i: read_chunk(root, i, layout) for i in done}
    return assemble_run(root, config, manifest, layout, t, chunks)


# --------------------------------------------------------------------------- summaries


def _stats(values) -> dict:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"median": None, "min": None, "max": None, "count": 0}
    return {
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "count": int(v.size),
    }


def point_label(point: Mapping) -> str:
    """``σ=1e-05, η=0.01, β=0.9`` (flow points: σ only)."""
    parts = [f"σ={point['sigma']:g}"]
    if point.get("lr") is not None:
        parts.append(f"η={point['lr']:g}")
    if point.get("momentum") is not None:
        parts.append(f"β={point['momentum']:g}")
    return ", ".join(parts)


def summarize(run: Run) -> list[dict]:
    """Per-point numbers over the runs that finished cleanly (failed runs are listed, not used).

    For each point: its flow time t_end (the last record) and optimiser steps, loss-drop time
    (`loss_drop`: only for runs whose loss dropped; the others are listed under ``no_drop``
    with the reason), final loss and accuracies, balance drift max_i drift_i
    (docs/theory.md §2, `balance_drift`), and the number of race winners (fewest neurons
    carrying 90% of Σ_i P_i at the end, `race_winners`, docs/theory.md §5).
    """
    obs = run.observables
    out = []
    for p, point in enumerate(run.points):
        ok = np.flatnonzero(run.ok[p])
        failed = [
            {
                "seed": int(run.seeds[s]),
                "status": int(run.status[p, s]),
                "status_message": status_text(run.status[p, s]),
            }
            for s in range(len(run.seeds))
            if not run.ok[p, s]
        ]
        t = run.t[p]
        drops, no_drop, drifts, winners = [], [], [], []
        for s in ok:
            drop = loss_drop(t, obs["loss"][p, s])
            if drop.time is None:
                no_drop.append({"seed": int(run.seeds[s]), "reason": drop.reason})
            else:
                drops.append(drop.time)
            drifts.append(float(np.max(np.asarray(balance_drift(run.observables_of(p, int(s)))))))
            winners.append(float(race_winners(obs["P"][p, s, -1], share=_WINNER_SHARE).size))
        final = {
            name: _stats(obs[name][p, ok, -1])
            for name in ("loss", "accuracy", "test_loss", "test_accuracy")
        }
        out.append(
            {
                "point": dict(point),
                "label": point_label(point),
                "flow_time": float(t[-1]),
                "seeds": len(run.seeds),
                "ok": int(ok.size),
                "failed": failed,
                "final_loss": final["loss"],
                "train_accuracy": final["accuracy"],
                "test_loss": final["test_loss"],
                "test_accuracy": final["test_accuracy"],
                "loss_drop_time": _stats(drops),
                "no_drop": no_drop,
                "balance_drift": _stats(drifts),
                "race_winners": _stats(winners),
                "num_steps": _stats(run.num_steps[p, ok]),
            }
        )
    return out


def unequal_flow_times(summary: list[dict]) -> str:
    """A warning when the points of a sweep ran to different flow times (else ``""``): their final
    numbers then compare runs at different stages of the flow."""
    ends = sorted({round(s["flow_time"], 9) for s in summary})
    if len(ends) < 2:
        return ""
    shown = ", ".join(f"{t:g}" for t in ends[:6]) + (", ..." if len(ends) > 6 else "")
    return (
        f"the settings ran to different flow times (t_end = {shown}): their final numbers compare "
        "runs at different stages of the flow; sgd/gd sweeps meet at equal flow time with --t-end"
    )


def drop_text(s: Mapping, spec: str = ".3g") -> str:
    """The loss-drop entry of one point's summary: ``loss drop at t=143``, ``loss drop at t=143
    (3/4 seeds; 1 no drop)``, or ``no loss drop (<reason>)``."""
    stats, no_drop = s["loss_drop_time"], s["no_drop"]
    if stats["count"] == 0:
        if not no_drop:
            return "loss drop –"
        reason = no_drop[0]["reason"]
        many = " in any seed" if len(no_drop) > 1 else ""
        return f"no loss drop{many} ({reason})"
    text = f"loss drop at t={stats['median']:{spec}}"
    if no_drop:
        text += f" ({stats['count']}/{stats['count'] + len(no_drop)} seeds; {len(no_drop)} no drop)"
    return text


# --------------------------------------------------------------------------- figures and report


def _drop_cell(s: Mapping) -> str:
    if s["loss_drop_time"]["count"] == 0:
        return "no drop" if s["no_drop"] else "–"
    text = _fmt(s["loss_drop_time"])
    return f"{text} ({len(s['no_drop'])} no drop)" if s["no_drop"] else text


def _fmt(stats: dict, spec: str = ".3g") -> str:
    if stats["median"] is None:
        return "–"
    if stats["count"] == 1 or stats["min"] == stats["max"]:
        return format(stats["median"], spec)
    return f"{stats['median']:{spec}} [{stats['min']:{spec}}, {stats['max']:{spec}}]"


def chunk_text(layout: Mapping) -> str:
    """What the chunks of a plan held: ``2 chunks of 4 and 2 runs`` / ``3 chunks of 1 run``."""
    sizes = [stop - start for start, stop in layout.get("chunks", [])]
    if not sizes:
        return "no chunks"
    n = len(sizes)
    head = f"{n} chunk{'s' if n > 1 else ''} of "
    distinct = sorted(set(sizes), reverse=True)
    if len(distinct) == 1:
        return head + f"{distinct[0]} run{'s' if distinct[0] > 1 else ''}"
    if len(distinct) == 2 and sizes.count(distinct[1]) == 1 and sizes[-1] == distinct[1]:
        return head + f"{distinct[0]} runs (the last {distinct[1]})"
    return head + f"{distinct[-1]} to {distinct[0]} runs"


def report_markdown(
    run: Run, summary: list[dict], figures: Mapping[str, Mapping[str, Path]]
) -> str:
    """The text of ``report.md``: what was run, numbers per point, failed seeds, figures
    (``figures``: section title → figure name → path)."""
    cfg, man = run.config, run.manifest
    ds = man.get("dataset", {})
    invocation = (man.get("invocations") or [{}])[-1]
    timings = man.get("timings") or {}
    ver = man.get("versions", {})
    chunks = chunk_text(run.layout)
    lines = [
        f"# gflow {cfg['trainer']} run: d={cfg['width']}, "
        f"{len(run.points)} point(s) × {len(run.seeds)} seed(s)",
        "",
        f"- data: {ds.get('describe', cfg['dataset'])}",
        f"  ({ds.get('provenance', '')})",
        f"- gflow {ver.get('gflow')}, jax {ver.get('jax')}, diffrax {ver.get('diffrax')}, "
        f"optax {ver.get('optax')}; backend {man.get('backend')} × {man.get('device_count')}; "
        f"dtype {cfg['dtype']}",
        f"- command: `{' '.join(invocation.get('command', []))}`",
        f"- started {man.get('invocations', [{}])[0].get('started')}, "
        f"last invocation ended {invocation.get('ended')}",
        f"- runs finished: {int(np.sum(run.status != NOT_RUN))} of {run.status.size}"
        f" ({int(np.sum(run.ok))} ok)",
        f"- timings: compile {timings.get('compile_seconds', 0.0):.1f} s, compute "
        f"{timings.get('compute_seconds', 0.0):.1f} s in {chunks}",
    ]
    t_end = run.layout.get("t_end")
    if t_end is not None:
        lines.append(
            f"- every point runs to flow time t_end = {t_end:g}: steps = t_end·(1−β)/η per point"
        )
    lines += ["", "## Configuration", "", "| key | value |", "| --- | --- |"]
    for k, v in cfg.items():
        if v is None:
            continue
        if k == "chunk_size":
            lines.append(f"| {k} | `{v}` (requested; the plan made {chunks}) |")
        elif k in ("steps", "record_every") and t_end is not None:
            lines.append(f"| {k} | `{v}` (sets the number of records; steps per point below) |")
        else:
            lines.append(f"| {k} | `{v}` |")
    warning = unequal_flow_times(summary)
    lines += [
        "",
        "## Results per point (successful seeds: median [min, max])",
        "",
        "- flow time: t at the last record (t = k·η/(1−β) after k SGD/GD steps, "
        "docs/theory.md §1);",
        "- loss-drop time: first t with L(t) ≤ L(0) − ½ (L(0) − min L), for the runs whose loss "
        f"fell by at least {MIN_LOSS_FALL:.0%} of L(0) (the others are listed as no drop);",
        "- balance drift: max_i max_t |Q_i(t) − Q_i(0)| / max_t (‖w_i‖² + b_i² + ‖v_i‖²) "
        "(docs/theory.md §2; ~rtol for the ODE, O(η) for GD/SGD);",
        f"- race winners: fewest neurons whose final P_i = ‖w_i‖‖v_i‖ add up to "
        f"{_WINNER_SHARE:.0%} of Σ P_i (docs/theory.md §5);",
        "- figures: cos δ_i is the angle between w_i and its error vector e_i (docs/theory.md §2); "
        "the scatter of final P_i takes δ_i against the target of the neuron's current cell "
        "(docs/theory.md §4) at half the median loss-drop time.",
        "",
    ]
    if warning:
        lines += [f"**Note:** {warning}.", ""]
    lines += [
        "| point | flow time | ok / seeds | final loss | train acc | test acc | loss-drop t "
        "| balance drift | race winners | steps |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary:
        lines.append(
            f"| {s['label']} | {s['flow_time']:.4g} | {s['ok']} / {s['seeds']} "
            f"| {_fmt(s['final_loss'])} | {_fmt(s['train_accuracy'])} "
            f"| {_fmt(s['test_accuracy'])} | {_drop_cell(s)} | {_fmt(s['balance_drift'], '.2e')} "
            f"| {_fmt(s['race_winners'], '.0f')} | {_fmt(s['num_steps'], '.0f')} |"
        )
    no_drop = [(s["label"], f) for s in summary for f in s["no_drop"]]
    if no_drop:
        lines += ["", "Runs whose loss did not drop:", ""]
        lines += [f"- {label}, seed {f['seed']}: {f['reason']}" for label, f in no_drop[:50]]
        if len(no_drop) > 50:
            lines.append(f"- … {len(no_drop) - 50} more in summary.json")
    failures = [(s["label"], f) for s in summary for f in s["failed"]]
    lines += ["", "## Status per seed", ""]
    if not failures:
        lines.append(
            "The run finished with status ok."
            if run.status.size == 1
            else f"All {run.status.size} runs finished with status ok."
        )
    else:
        lines += [
            f"{len(failures)} run(s) are excluded from the numbers above:",
            "",
            "| point | seed | status | message |",
            "| --- | --- | --- | --- |",
        ]
        shown = failures[:200]
        lines += [
            f"| {label} | {f['seed']} | {f['status']} | {f['status_message']} |"
            for label, f in shown
        ]
        if len(failures) > len(shown):
            lines.append(f"| … | | | {len(failures) - len(shown)} more in summary.json |")
    lines += ["", "## Figures", ""]
    if not figures:
        lines.append("No figures: no run finished cleanly.")
    root = run.path
    for section, figs in figures.items():
        lines += [f"### {section}", ""]
        for name, path in figs.items():
            rel = Path(path).relative_to(root) if root is not None else Path(path)
            lines.append(f"![{name}]({rel.as_posix()})")
        lines.append("")
    lines += [
        "## Files",
        "",
        "`chunks/chunk-NNNNN/<field>.npy` hold the observables [member, time(, neuron)], members "
        "in point-major order (see `axes.json`); `t.npy` the flow times [point, time]; "
        "`params_final.npz` the final weights. Load everything with `gflow.load_run(path)` "
        "(`.to_xarray()` for an xarray Dataset).",
        "",
    ]
    return "\n".join(lines)


def run_network(folder, point: int | None = None, seed: int | None = None):
    """``(params, data, dataset, record)``: the final weights of one run of a run or sweep
    folder, with the run's own data, rebuilt from its configuration (checked against the
    fingerprint in its manifest), in the run's dtype (64-bit JAX must be on for float64).

    ``point`` defaults to 0 and ``seed`` to the folder's first seed; ``record`` names the run
    (folder, point, setting, seed, trainer, flow time). Raises ``ValueError`` naming the points
    or seeds the folder has, or when its data cannot be rebuilt.
    """
    run = load_run(folder)
    point = 0 if point is None else point
    seed = int(run.seeds[0]) if seed is None else seed
    params = run.params_of(point, seed)  # ValueError naming the points or seeds it has
    dataset = dataset_from_options(
        run.config["dataset"],
        preprocess=run.config.get("preprocess") or "center-unit",
        classes=run.config.get("classes"),
        n_per_class=run.config.get("n_per_class"),
        data_seed=run.config.get("data_seed") or 0,
    )
    if run.manifest.get("dataset", {}).get("fingerprint") != dataset_fingerprint(dataset):
        raise ValueError(
            "its data cannot be rebuilt from its configuration (the fingerprint differs, e.g. a "
            "dataset passed to gflow.sweep in Python); analyse it in Python with "
            "gflow.load_run(DIR).params_of(point, seed)"
        )
    dtype = jnp.dtype(run.config["dtype"])
    net = Params(*(jnp.asarray(a, dtype) for a in params))
    record = {
        "run": str(folder),
        "point": point,
        "setting": point_label(run.points[point]),
        "seed": seed,
        "trainer": run.config["trainer"],
        "flow_time": float(run.t[point, -1]),
    }
    return net, training_data(dataset, dtype), dataset, record

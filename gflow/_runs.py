"""Run folders: what a run or sweep leaves on disk, written so that nothing is lost, and read back.

Layout of a run folder::

    config.json          the resolved `RunConfig` (every key; None where it does not apply)
    axes.json            the plan: hyper-parameter points, seeds, member order, seed chunks,
                         and for every stored field its axes, per-run shape and dtype
    t.npy                flow time of each record, [point, time] (t = k·η/(1−β) for SGD/GD)
    manifest.json        versions (gflow, jax, jaxlib, optax, diffrax, ...), backend, devices,
                         dtype, seeds, dataset fingerprint, invocations (command line, start/end
                         timestamps, compile and per-chunk timings)
    chunks/chunk-00000/  one folder per finished chunk of runs ("members"):
        <field>.npy          observables [member, time(, neuron)] (`gflow.Observables` names)
        status.npy           status code per member (0 ok, 1 max steps, 2 solver failed, 3 non-finite)
        num_steps.npy        solver or optimiser steps per member
        params_final.npz     final W [member, neuron, input], b, V
    summary.json         per-point numbers of `summarize` (finished, successful runs only)
    figures/*.png        `gflow._plots` figures
    report.md            the figures and numbers, readable on its own

Members are the runs of the sweep, point-major: member ``m = point · S + seed_index``. A chunk
is a fixed number of consecutive members (the last one padded inside the computation), so one
compiled program serves them all.

Nothing is ever half-written: every file goes to a temporary name in its own folder and is
moved into place with ``os.replace``; a chunk is assembled in a hidden ``chunks/.partial-*``
folder and renamed to ``chunks/chunk-NNNNN`` only when complete. A killed sweep therefore
leaves only whole chunks, and ``--resume`` continues after them.

Example:
    >>> run = load_run("gflow-out/sweep")  # doctest: +SKIP
    >>> run.observables["P"].shape, run.axes["P"]  # doctest: +SKIP
    ((2, 64, 301, 50), ('point', 'seed', 'time', 'neuron'))
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._network import Params
from ._observables import Observables, balance_drift
from ._race import loss_drop_time, race_winners
from ._trajectory import OK, STATUS_MESSAGES

FORMAT = "gflow-run-1"
NOT_RUN = -1
NOT_RUN_MESSAGE = "not computed: the sweep stopped before this chunk (continue it with --resume)"
CHUNKS = "chunks"
_PARTIAL = ".partial-"
_PARAM_FIELDS = ("W", "b", "V")
_EARLY_FRACTION = (
    0.5  # "early" time of the final-vs-early figure: this fraction of the loss-drop time
)
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


def write_bytes_atomic(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; a run folder is meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path, obj) -> Path:
    return write_bytes_atomic(
        path, (json.dumps(obj, indent=2, allow_nan=True, ensure_ascii=False) + "\n").encode()
    )


def write_text_atomic(path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_npy_atomic(path, array) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return write_bytes_atomic(path, buffer.getvalue())


def write_npz_atomic(path, **arrays) -> Path:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return write_bytes_atomic(path, buffer.getvalue())


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"{path.parent} is not a gflow run folder: {path.name} ({what}) is missing."
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} ({what}) is corrupt: {err}") from None


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"run folder chunk file is missing: {path}") from None
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"run folder chunk file {path} is corrupt: {err}") from None


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


def remove_partial_chunks(path) -> list[str]:
    """Delete what a killed process can leave: partial chunk folders and temporary files."""
    root = Path(path)
    removed = []
    chunk_dir = root / CHUNKS
    if chunk_dir.is_dir():
        for p in chunk_dir.iterdir():
            if p.name.startswith(_PARTIAL) and p.is_dir():
                shutil.rmtree(p)
                removed.append(p.name)
    for folder in (root, root / "figures"):
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_file() and p.name.startswith(".") and p.name.endswith(".tmp"):
                    p.unlink()
                    removed.append(p.name)
    return removed


def chunk_name(index: int) -> str:
    return f"chunk-{index:05d}"


def finished_chunks(path, n_chunks: int) -> list[int]:
    """Indices of the chunks whose folders are complete on disk."""
    chunk_dir = Path(path) / CHUNKS
    return [i for i in range(n_chunks) if (chunk_dir / chunk_name(i)).is_dir()]


def write_chunk(
    path, index: int, arrays: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray]
) -> Path:
    """Write one finished chunk: every field as ``.npy``, final params as ``.npz``; the chunk
    folder appears under its final name only once everything is on disk."""
    chunk_dir = Path(path) / CHUNKS
    final = chunk_dir / chunk_name(index)
    if final.exists():
        raise ValueError(f"chunk {final} already exists; a finished chunk is never rewritten.")
    partial = Path(tempfile.mkdtemp(prefix=f"{_PARTIAL}{chunk_name(index)}-", dir=chunk_dir))
    try:
        for name, a in arrays.items():
            write_npy_atomic(partial / f"{name}.npy", a)
        write_npz_atomic(partial / "params_final.npz", **params)
        os.chmod(partial, _DIR_MODE)
        _fsync_dir(partial)
        os.replace(partial, final)
        _fsync_dir(chunk_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def read_chunk(path, index: int, layout: dict) -> tuple[dict, dict]:
    """The arrays of chunk ``index`` (fields by name; final params W, b, V)."""
    folder = Path(path) / CHUNKS / chunk_name(index)
    arrays = {name: _load_npy(folder / f"{name}.npy") for name in layout["fields"]}
    try:
        with np.load(folder / "params_final.npz", allow_pickle=False) as z:
            params = {k: z[k] for k in _PARAM_FIELDS}
    except FileNotFoundError:
        raise ValueError(
            f"run folder chunk file is missing: {folder / 'params_final.npz'}"
        ) from None
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"run folder chunk file {folder / 'params_final.npz'} is corrupt: {err}"
        ) from None
    return arrays, params


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
        axes: field name → axis names, e.g. ``("point", "seed", "time", "neuron")``.
        final_params: `Params` of arrays ``[point, seed, neuron, ...]``.
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
    axes.update(
        {
            name: ("point", "seed", *spec["axes"][1:])
            for name, spec in layout["final_params"].items()
        }
    )
    axes["t"] = ("point", "time")
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
        final_params=Params(**{k: stacked(params[k]) for k in _PARAM_FIELDS}),
        status=stacked(fields["status"]).astype(np.int32),
        num_steps=stacked(fields["num_steps"]),
    )


def load_run(path) -> Run:
    """Read a run folder back: configuration, manifest, observables stacked by field with named
    axes ``(point, seed, time, neuron)``, final parameters and per-run status.

    Works on an unfinished sweep too: runs of chunks not on disk have status −1 and NaN fields.

    Raises:
        ValueError: ``path`` is not a gflow run folder, or one of its files is corrupt.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"run folder not found: {root}")
    config = read_json(root / "config.json", "configuration")
    layout = read_json(root / "axes.json", "axes and fields")
    if layout.get("format") != FORMAT:
        raise ValueError(
            f"{root / 'axes.json'} has format {layout.get('format')!r}; this gflow reads {FORMAT!r}."
        )
    manifest = read_json(root / "manifest.json", "manifest")
    t = _load_npy(root / "t.npy")
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

    For each point: loss-drop time (`gflow._race.loss_drop_time`, half of the total decrease),
    final loss and accuracies, balance drift max_i drift_i (docs/theory.md §2, `balance_drift`), and
    the number of race winners (fewest neurons carrying 90% of Σ_i P_i at the end,
    `race_winners`, docs/theory.md §5).
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
        drops, drifts, winners = [], [], []
        for s in ok:
            drops.append(loss_drop_time(t, obs["loss"][p, s]))
            drifts.append(float(np.max(np.asarray(balance_drift(run.observables_of(p, s))))))
            winners.append(float(race_winners(obs["P"][p, s, -1], share=_WINNER_SHARE).size))
        final = {
            name: _stats(obs[name][p, ok, -1])
            for name in ("loss", "accuracy", "test_loss", "test_accuracy")
        }
        out.append(
            {
                "point": dict(point),
                "label": point_label(point),
                "seeds": len(run.seeds),
                "ok": int(ok.size),
                "failed": failed,
                "final_loss": final["loss"],
                "train_accuracy": final["accuracy"],
                "test_loss": final["test_loss"],
                "test_accuracy": final["test_accuracy"],
                "loss_drop_time": _stats(drops),
                "balance_drift": _stats(drifts),
                "race_winners": _stats(winners),
                "num_steps": _stats(run.num_steps[p, ok]),
            }
        )
    return out


# --------------------------------------------------------------------------- figures and report


def _early_index(t: np.ndarray, drop_median) -> tuple[int, float]:
    """Record nearest to the early time: half the median loss-drop time (a tenth of the grid
    when the loss never drops)."""
    if drop_median is None:
        i = len(t) // 10
    else:
        i = int(np.clip(np.searchsorted(t, _EARLY_FRACTION * drop_median), 0, len(t) - 1))
    return i, float(t[i])


def draw_figures(run: Run, folder, summary: list[dict] | None = None) -> dict[int, dict[str, Path]]:
    """All figures of a run (per point: norms, cos δ, loss, final P vs early cos δ).

    The cos δ_i curves measure the angle between w_i and its error vector e_i (docs/theory.md §2); the
    final-vs-early scatter measures δ_i against the target of the neuron's current cell
    (``cos_target``, docs/theory.md §4), at half the median loss-drop time.

    Drawn from the first successful seed of a point (norms, cos δ) or all its successful seeds
    (loss: up to 20 curves; the scatter pools every seed). Returns ``{point: {name: path}}``.
    """
    from . import _plots

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = summary if summary is not None else summarize(run)
    obs = run.observables
    multi = len(run.points) > 1
    out: dict[int, dict[str, Path]] = {}
    for p, point in enumerate(run.points):
        ok = np.flatnonzero(run.ok[p])
        if ok.size == 0:
            continue
        suffix = f"_p{p}" if multi else ""
        label = point_label(point)
        s0 = ok[0]
        t = run.t[p]
        seed = int(run.seeds[s0])
        curves = ok[:20]
        figs = {
            "norms": _plots.plot_norms(
                t,
                obs["P"][p, s0],
                folder / f"norms{suffix}.png",
                title=f"P_i, seed {seed}, {label}",
            ),
            "cos_delta": _plots.plot_cos_delta(
                t,
                obs["cos_delta"][p, s0],
                folder / f"cos_delta{suffix}.png",
                title=f"cos δ_i, seed {seed}, {label}",
            ),
            "loss": _plots.plot_loss(
                t,
                obs["loss"][p, curves],
                folder / f"loss{suffix}.png",
                test_loss=obs["test_loss"][p, curves],
                accuracy=obs["accuracy"][p, curves],
                test_accuracy=obs["test_accuracy"][p, curves],
                title=f"{label} ({curves.size} seed{'s' if curves.size > 1 else ''})",
            ),
        }
        i_early, t_early = _early_index(t, summary[p]["loss_drop_time"]["median"])
        # δ_i against the target of the neuron's current cell, as in the paper's experiments (docs/theory.md §4).
        figs["final_vs_early"] = _plots.plot_final_vs_early(
            obs["cos_target"][p, ok, i_early],
            obs["P"][p, ok, -1],
            folder / f"final_vs_early{suffix}.png",
            t_early=t_early,
        )
        out[p] = figs
    return out


def _fmt(stats: dict, spec: str = ".3g") -> str:
    if stats["median"] is None:
        return "–"
    if stats["count"] == 1 or stats["min"] == stats["max"]:
        return format(stats["median"], spec)
    return f"{stats['median']:{spec}} [{stats['min']:{spec}}, {stats['max']:{spec}}]"


def report_markdown(
    run: Run, summary: list[dict], figures: Mapping[int, Mapping[str, Path]]
) -> str:
    """The text of ``report.md``: what was run, numbers per point, failed seeds, figures."""
    cfg, man = run.config, run.manifest
    ds = man.get("dataset", {})
    invocation = (man.get("invocations") or [{}])[-1]
    timings = man.get("timings") or {}
    lines = [
        f"# gflow {cfg['trainer']} run: d={cfg['width']}, {len(run.points)} point(s) × {len(run.seeds)} seed(s)",
        "",
        f"- data: {ds.get('describe', cfg['dataset'])}",
        f"  ({ds.get('provenance', '')})",
        f"- gflow {man.get('versions', {}).get('gflow')}, jax {man.get('versions', {}).get('jax')}, "
        f"diffrax {man.get('versions', {}).get('diffrax')}, optax {man.get('versions', {}).get('optax')}; "
        f"backend {man.get('backend')} × {man.get('device_count')}; dtype {cfg['dtype']}",
        f"- command: `{' '.join(invocation.get('command', []))}`",
        f"- started {man.get('invocations', [{}])[0].get('started')}, last invocation ended {invocation.get('ended')}",
        f"- runs finished: {int(np.sum(run.status != NOT_RUN))} of {run.status.size}"
        f" ({int(np.sum(run.ok))} ok)",
        f"- timings: compile {timings.get('compile_seconds', 0.0):.1f} s, compute "
        f"{timings.get('compute_seconds', 0.0):.1f} s in chunks of {run.layout.get('chunk_size')} run(s)",
        "",
        "## Configuration",
        "",
        "| key | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | `{v}` |" for k, v in cfg.items() if v is not None]
    lines += [
        "",
        "## Results per point (successful seeds: median [min, max])",
        "",
        "- loss-drop time: first t with L(t) ≤ L(0) − ½ (L(0) − min L);",
        "- balance drift: max_i max_t |Q_i(t) − Q_i(0)| / max_t (‖w_i‖² + b_i² + ‖v_i‖²) (docs/theory.md §2; ~rtol for the ODE, O(η) for GD/SGD);",
        f"- race winners: fewest neurons whose final P_i = ‖w_i‖‖v_i‖ add up to {_WINNER_SHARE:.0%} of Σ P_i (docs/theory.md §5);",
        "- figures: cos δ_i is the angle between w_i and its error vector e_i (docs/theory.md §2); the scatter of final P_i "
        "takes δ_i against the target of the neuron's current cell (docs/theory.md §4) at half the median loss-drop time.",
        "",
        "| point | ok / seeds | final loss | train acc | test acc | loss-drop t | balance drift | race winners | steps |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary:
        lines.append(
            f"| {s['label']} | {s['ok']} / {s['seeds']} | {_fmt(s['final_loss'])} | {_fmt(s['train_accuracy'])} | "
            f"{_fmt(s['test_accuracy'])} | {_fmt(s['loss_drop_time'])} | {_fmt(s['balance_drift'], '.2e')} | "
            f"{_fmt(s['race_winners'], '.0f')} | {_fmt(s['num_steps'], '.0f')} |"
        )
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
    for p, figs in figures.items():
        lines += [f"### {point_label(run.points[p])}", ""]
        for name, path in figs.items():
            rel = Path(path).relative_to(root) if root is not None else Path(path)
            lines.append(f"![{name}]({rel.as_posix()})")
        lines.append("")
    lines += [
        "## Files",
        "",
        "`chunks/chunk-NNNNN/<field>.npy` hold the observables [member, time(, neuron)], members in "
        "point-major order (see `axes.json`); `t.npy` the flow times [point, time]; "
        "`params_final.npz` the final weights. Load everything with `gflow.load_run(path)`.",
        "",
    ]
    return "\n".join(lines)


def write_outputs(run: Run) -> dict:
    """Write ``summary.json``, the figures and ``report.md`` of a run folder; returns the paths."""
    if run.path is None:
        raise ValueError("write_outputs needs a run with a folder (run.path is None).")
    summary = summarize(run)
    write_json_atomic(run.path / "summary.json", {"points": summary, "complete": run.complete})
    figures = draw_figures(run, run.path / "figures", summary)
    report = write_text_atomic(run.path / "report.md", report_markdown(run, summary, figures))
    return {"summary": run.path / "summary.json", "report": report, "figures": figures}

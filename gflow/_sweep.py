"""Sweeps: seeds × hyper-parameters in one compiled program, chunked, sharded and resumable.

A sweep runs every hyper-parameter point (the product σ × η × β of a `RunConfig`) for every
seed; each run ("member") is one trainer call from ``init_params(key(seed), d, D, σ)``. Members
``m = point·S + seed_index`` are cut into chunks, each one call of one jitted, vmapped program
sharded over the devices along the axis ``'seed'``; ``t_end=T`` gives each point
``k = T(1−β)/η`` steps (docs/theory.md §1). How the work is laid out: docs/numerics.md §6; the
run folder: docs/run_folders.md; several hosts: docs/multihost.md.

Example:
    >>> ds = gflow.load_dataset("clusters", n_samples=64, dim=8)  # doctest: +SKIP
    >>> cfg = RunConfig(trainer="gd", width=8, sigma=1e-3, lr=(0.05, 0.1), steps=200, seeds="0:16")
    >>> run = sweep(ds, cfg, out="runs/gd")  # doctest: +SKIP
    >>> run.observables["loss"].shape  # doctest: +SKIP
    (2, 16, 21)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import _runs
from ._config import RunConfig, config_differences
from ._dataset import Dataset
from ._flow import FlowConfig, gradient_flow
from ._network import PAPER, Model, gating_pattern, init_params
from ._observables import TrainingData, training_data
from ._progress import Progress
from ._resources import require_memory, sweep_memory
from ._sgd import SGDConfig, flow_time, train_sgd
from ._trajectory import DEAD, NON_FINITE, OK, STATUS_MESSAGES, Trajectory

MESH_AXIS = "seed"
_T = TypeVar("_T")


def _filled(value: _T | None, name: str) -> _T:
    """A `RunConfig` field after construction, where every default is filled in (never None)."""
    if value is None:
        raise ValueError(f"RunConfig.{name} is unset; construct the config with RunConfig(...).")
    return value


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """Where every member of a sweep goes.

    Attributes:
        config: the `RunConfig`.
        points: hyper-parameter points (σ-major product).
        seeds: the seeds.
        chunk_size: members per compiled call (a multiple of the device count).
        chunks: ``[start, stop)`` member ranges.
        t: flow time of every record ``[point, time]`` (float64).
        t_end: sgd/gd runs to a common flow time (`steps_to_flow_time`), or None.
        sgd_configs: with ``t_end``, the `SGDConfig` of each point (its own step count).
    """

    config: RunConfig
    points: list
    seeds: tuple
    chunk_size: int
    chunks: list
    t: np.ndarray
    t_end: float | None = None
    sgd_configs: tuple | None = None

    @property
    def num_members(self) -> int:
        return len(self.points) * len(self.seeds)

    def point_of_chunk(self, index: int) -> int:
        """The point of chunk ``index``'s first member."""
        return self.chunks[index][0] // len(self.seeds)

    def member_inputs(self) -> dict[str, np.ndarray]:
        """Per-member seed, σ, η, β (η, β are 0 for the flow, where they are unused)."""
        s = len(self.seeds)
        point = np.repeat(np.arange(len(self.points)), s)

        def column(name):
            return np.asarray([self.points[p][name] or 0.0 for p in point], dtype=np.float64)

        return {
            "seed": np.tile(np.asarray(self.seeds, dtype=np.int32), len(self.points)),
            "sigma": column("sigma"),
            "lr": column("lr"),
            "momentum": column("momentum"),
        }


def steps_to_flow_time(t_end: float, learning_rate: float, momentum: float, intervals: int) -> int:
    """Optimiser steps k that bring SGD/GD with (η, β) to flow time ``t_end`` (docs/theory.md §1):

        k = t_end·(1−β)/η, rounded to the nearest positive multiple of ``intervals``

    (the number of record intervals, so every point has the same number of records); the flow
    time reached, `gflow.flow_time` (k, η, β), is within ½·intervals·η/(1−β) of ``t_end``.
    """
    if not (t_end > 0 and math.isfinite(t_end)):
        raise ValueError(f"t_end must be a finite flow time > 0; got {t_end!r}.")
    exact = t_end * (1.0 - momentum) / learning_rate
    return intervals * max(1, int(round(exact / intervals)))


def plan_sweep(
    config: RunConfig,
    dataset: Dataset,
    *,
    num_devices: int = 1,
    chunk_size: int | None = None,
    t_end: float | None = None,
) -> SweepPlan:
    """Lay out the members of ``config`` on ``dataset`` (validates batch ≤ N, epochs → steps).

    ``chunk_size`` (default ``config.chunk_size``) is rounded up to a multiple of
    ``num_devices``, and never exceeds the member count rounded up the same way.

    ``t_end`` (sgd/gd only) runs every point to the same flow time: point (η, β) takes
    `steps_to_flow_time` steps, keeping the configuration's number of records
    (steps / record_every); each step count is its own compiled program, so chunks then never
    straddle two points.
    """
    points = config.points()
    seeds = _filled(config.seeds, "seeds")
    n_seeds = len(seeds)
    members = len(points) * n_seeds
    requested = _filled(config.chunk_size, "chunk_size") if chunk_size is None else chunk_size
    if config.trainer == "flow":
        if t_end is not None:
            raise ValueError(
                "t_end here is for sgd/gd sweeps; the flow's end time is RunConfig.t_end."
            )
        t = np.tile(config.save_times(), (len(points), 1))
        sgd_configs = None
    else:
        sgd = config.sgd_config(dataset.n_samples)
        if t_end is None:
            k = np.arange(sgd.num_records, dtype=np.float64) * sgd.record_every
            t = np.stack([flow_time(k, p["lr"], p["momentum"]) for p in points])
            sgd_configs = None
        else:
            intervals = sgd.num_records - 1
            sgd_configs = []
            for p in points:
                steps = steps_to_flow_time(t_end, p["lr"], p["momentum"], intervals)
                sgd_configs.append(
                    dataclasses.replace(sgd, steps=steps, record_every=steps // intervals)
                )
            t = np.stack(
                [
                    flow_time(
                        np.arange(c.num_records, dtype=np.float64) * c.record_every,
                        p["lr"],
                        p["momentum"],
                    )
                    for c, p in zip(sgd_configs, points)
                ]
            )
            sgd_configs = tuple(sgd_configs)
    if sgd_configs is None:
        size = num_devices * math.ceil(min(requested, members) / num_devices)
        chunks = [[start, min(start + size, members)] for start in range(0, members, size)]
    else:  # one program per point: chunks within points
        size = num_devices * math.ceil(min(requested, n_seeds) / num_devices)
        chunks = [
            [start, min(start + size, (p + 1) * n_seeds)]
            for p in range(len(points))
            for start in range(p * n_seeds, (p + 1) * n_seeds, size)
        ]
    return SweepPlan(
        config=config,
        points=points,
        seeds=seeds,
        chunk_size=size,
        chunks=chunks,
        t=t,
        t_end=None if t_end is None else float(t_end),
        sgd_configs=sgd_configs,
    )


@dataclasses.dataclass(frozen=True)
class MemberSpec:
    """Static description of one member's computation (hashable: the jit cache key).

    Everything a run depends on that is not a traced value: trainer, sizes, dtype and the
    trainer's static config. Two sweeps with equal specs share one compilation.
    """

    trainer: str
    width: int
    dim: int
    dtype: str
    orthogonal_init: bool
    sgd: SGDConfig | None = None
    flow: FlowConfig | None = None
    save_times: tuple | None = None
    classes: int = 2
    model: Model = PAPER

    @classmethod
    def of(
        cls,
        config: RunConfig,
        n_samples: int,
        dim: int,
        sgd: SGDConfig | None = None,
        classes: int = 2,
    ) -> MemberSpec:
        """The spec of ``config``'s members on data of K = ``classes`` classes (``sgd`` replaces
        its `SGDConfig`, e.g. one point's step count under a common flow time)."""
        flow = config.trainer == "flow"
        return cls(
            trainer=config.trainer,
            width=_filled(config.width, "width"),
            dim=dim,
            dtype=_filled(config.dtype, "dtype"),
            orthogonal_init=_filled(config.orthogonal_init, "orthogonal_init"),
            sgd=None if flow else (sgd if sgd is not None else config.sgd_config(n_samples)),
            flow=config.flow_config() if flow else None,
            save_times=tuple(config.save_times().tolist()) if flow else None,
            classes=classes,
            model=config.model(),
        )


def run_member(data: TrainingData, seed, sigma, lr, momentum, spec: MemberSpec):
    """One member: ``(observables, final params, status, num_steps)``.

    The initial weights are ``init_params(split(key(seed))[0], d, D, σ)``; the SGD batch order
    comes from ``split(key(seed))[1]``; η and β are unused by the flow.

    Besides the trainer's own status, a finished run is `NON_FINITE` when a recorded observable
    overflowed, and `DEAD` when its final network is dead (`is_dead`): no gradient can ever
    move it again, its output is 0 and its loss ln 2, so it is no result of training.
    """
    key_init, key_batch = jax.random.split(jax.random.key(seed))
    params0 = init_params(
        key_init,
        spec.width,
        spec.dim,
        sigma,
        orthogonal=spec.orthogonal_init,
        dtype=jnp.dtype(spec.dtype),
        classes=spec.classes,
    )
    if spec.flow is not None:
        traj = gradient_flow(
            params0,
            data,
            np.asarray(spec.save_times),
            config=spec.flow,
            throw=False,
            model=spec.model,
        )
        assert isinstance(traj, Trajectory)  # return_stats=False: no FlowStats
    else:
        assert spec.sgd is not None
        traj = train_sgd(
            params0,
            key_batch,
            data,
            learning_rate=lr,
            momentum=momentum,
            config=spec.sgd,
            throw=False,
            model=spec.model,
        )
    obs = traj.observables
    # Weights can stay finite while the recorded loss or P_i = ‖w_i‖‖v_i‖ overflow: diverged too.
    recorded = jnp.stack(
        [jnp.all(jnp.isfinite(a)) for a in (obs.loss, obs.P, obs.Q, obs.w_norm, obs.v_norm, obs.b)]
    )
    status = jnp.where((traj.status == OK) & ~jnp.all(recorded), NON_FINITE, traj.status)
    if spec.model.activation == "relu":  # a leaky or smooth activation never closes every path
        status = jnp.where((status == OK) & is_dead(traj.final_params, data.x), DEAD, status)
    return obs, traj.final_params, status.astype(traj.status.dtype), traj.num_steps


def is_dead(params, x) -> jax.Array:
    """True when every neuron is inactive on every training sample:

        z_i(x_s) = w_i·x_s + b_i ≤ 0   for all i and s      (`gating_pattern` all closed)

    Then every hidden activation and every ReLU derivative is 0 on the data, so the gradient of
    the loss in W, b and V vanishes (docs/theory.md §1): gradient descent and the flow stay
    there, with output o = 0 and loss ln 2. A jnp scalar, usable under jit and vmap.
    """
    return ~jnp.any(gating_pattern(params, x))


@functools.partial(jax.jit, static_argnames=("spec",))
def run_members(data: TrainingData, seed, sigma, lr, momentum, *, spec: MemberSpec):
    """`run_member` vmapped over the leading (member) axis of ``seed, sigma, lr, momentum``.

    Jitted once per ``spec`` and input sharding: hyper-parameters are traced, so every chunk of
    every point of a sweep, and every later sweep with the same spec, reuses the compilation.
    """
    member = functools.partial(run_member, spec=spec)
    return jax.vmap(member, in_axes=(None, 0, 0, 0, 0))(data, seed, sigma, lr, momentum)


def device_mesh(devices: Sequence | None = None) -> Mesh:
    """A one-axis mesh named ``'seed'`` over ``devices`` (default: all devices of all hosts)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must name at least one device.")
    return Mesh(np.asarray(devices), (MESH_AXIS,))


def _put(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array every process holds; each process supplies its shards."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _to_host(tree):
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.tree.map(np.asarray, jax.device_get(tree))


class _Program:
    """The chunk program: members sharded over the mesh, data replicated, compiled once."""

    def __init__(self, spec: MemberSpec, data: TrainingData, mesh: Mesh, chunk_size: int):
        self.spec = spec
        self.members = NamedSharding(mesh, PartitionSpec(MESH_AXIS))
        replicated = NamedSharding(mesh, PartitionSpec())
        self.dtype = np.dtype(spec.dtype)
        self.data = jax.tree.map(lambda a: _put(np.asarray(a), replicated), data)
        example = self._inputs(
            {
                "seed": np.zeros(chunk_size, np.int32),
                **{k: np.ones(chunk_size) for k in ("sigma", "lr", "momentum")},
            }
        )
        self._example = example
        self._compiled = None
        self.compile_seconds = 0.0
        with _quiet_casts():
            self.out_shapes = jax.eval_shape(
                functools.partial(run_members, spec=spec), self.data, *example
            )

    def compile(self):
        """Compile once (ahead of time, timed); later calls return the same executable."""
        if self._compiled is None:
            started = time.perf_counter()
            with _quiet_casts():
                self._compiled = run_members.lower(
                    self.data, *self._example, spec=self.spec
                ).compile()
            self.compile_seconds = time.perf_counter() - started
        return self._compiled

    def _inputs(self, columns: dict) -> list:
        return [
            _put(np.asarray(columns["seed"], np.int32), self.members),
            *(
                _put(np.asarray(columns[k], self.dtype), self.members)
                for k in ("sigma", "lr", "momentum")
            ),
        ]

    def __call__(self, columns: dict):
        """Run one chunk (``columns`` padded to the chunk size); host arrays back."""
        return _to_host(self.compile()(self.data, *self._inputs(columns)))


@contextlib.contextmanager
def _quiet_casts():
    """diffrax pre-fills its save buffers with inf, also those of the integer observables (kappa,
    active, cell_hash); NumPy warns about that cast although every slot is overwritten."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
        yield


def _agree(value):
    """Process 0's ``value`` on every process (itself when there is one process)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(value)))


def _chunk_columns(inputs: dict, start: int, stop: int, size: int) -> dict:
    """Members ``[start, stop)``, padded to ``size`` with copies of the last one."""
    index = np.minimum(np.arange(start, start + size), stop - 1)
    return {k: v[index] for k, v in inputs.items()}


def _split_outputs(out, count: int) -> tuple[dict, dict]:
    observables, params, status, num_steps = out
    arrays = {name: np.asarray(a)[:count] for name, a in observables._asdict().items()}
    arrays["status"] = np.asarray(status)[:count]
    arrays["num_steps"] = np.asarray(num_steps)[:count]
    return arrays, {name: np.asarray(a)[:count] for name, a in params._asdict().items()}


def _layout(plan: SweepPlan, out_shapes, dim: int) -> dict:
    observables, params, status, num_steps = out_shapes
    neuron_axes = {2: ("member", "time", "neuron"), 1: ("member", "time")}

    def spec(shape_dtype, axes):
        return {
            "axes": list(axes),
            "shape": list(shape_dtype.shape[1:]),
            "dtype": np.dtype(shape_dtype.dtype).str,
        }

    fields = {
        name: spec(s, neuron_axes[len(s.shape) - 1]) for name, s in observables._asdict().items()
    }
    fields["status"] = spec(status, ("member",))
    fields["num_steps"] = spec(num_steps, ("member",))
    final = {
        "W": spec(params.W, ("member", "neuron", "input")),
        "b": spec(params.b, ("member", "neuron")),
        "V": spec(params.V, ("member", "neuron", "output")),
    }
    common_time = (
        {}
        if plan.sgd_configs is None
        else {"t_end": plan.t_end, "steps": [c.steps for c in plan.sgd_configs]}
    )
    return {
        "format": _runs.FORMAT,
        "trainer": plan.config.trainer,
        "points": plan.points,
        "seeds": list(plan.seeds),
        "member_order": "point-major: member m = point * len(seeds) + seed_index",
        "chunk_size": plan.chunk_size,
        "chunks": plan.chunks,
        **common_time,
        "width": plan.config.width,
        "dim": dim,
        "time": {
            "file": "t.npy",
            "axes": ["point", "time"],
            "meaning": "flow time of each record; t = k·η/(1−β) after k SGD/GD steps",
        },
        "fields": fields,
        "final_params": final,
        "status_codes": {str(k): v for k, v in STATUS_MESSAGES.items()}
        | {str(_runs.NOT_RUN): _runs.NOT_RUN_MESSAGE},
    }


def _dataset_record(dataset: Dataset) -> dict:
    return {
        "name": dataset.name,
        "describe": dataset.describe(),
        "provenance": dataset.provenance,
        "n_samples": dataset.n_samples,
        "dim": dataset.dim,
        "n_test": 0 if dataset.x_test is None else int(dataset.x_test.shape[0]),
        "fingerprint": _runs.dataset_fingerprint(dataset),
    }


def _open_folder(
    out, config: RunConfig, dataset_record: dict, resume: bool
) -> tuple[Path, dict | None, dict | None, _runs.FolderLock]:
    """Create or reopen the run folder and take its lock (`gflow._runs.lock_folder`), then check
    it; for a resumed run return its manifest and layout. Raises ``ValueError`` (the lock
    released) for a folder held by another process, one that holds a different run, or chunks
    whose configuration is gone."""
    folder = _runs.create_run_folder(out)
    lock = _runs.lock_folder(folder)
    try:
        if not _runs.is_run_folder(folder):
            _refuse_orphan_chunks(folder, resume)
            return folder, None, None, lock
        if not resume:
            raise ValueError(
                f"output folder {folder} already holds a run; continue it with resume (--resume) "
                "or choose another output folder."
            )
        stored = _runs.read_json(folder / "config.json", "configuration")
        diff = config_differences(stored, config.to_dict())
        if diff:
            raise ValueError(
                f"cannot resume {folder}: it was made with a different configuration "
                f"({'; '.join(diff)})."
            )
        manifest = _runs.read_json(folder / "manifest.json", "manifest")
        layout = _runs.check_layout(
            _runs.read_json(folder / "axes.json", "axes and fields"), folder / "axes.json"
        )
        dataset = manifest.get("dataset")
        if (
            not isinstance(dataset, dict)
            or dataset.get("fingerprint") != dataset_record["fingerprint"]
        ):
            describe = dataset.get("describe") if isinstance(dataset, dict) else None
            raise ValueError(
                f"cannot resume {folder}: it was made with different data ({describe})."
            )
        if not isinstance(manifest.get("invocations", []), list):
            raise ValueError(f"{folder / 'manifest.json'} is corrupt: 'invocations' is no list.")
        _runs.remove_partial_chunks(folder)
        return folder, manifest, layout, lock
    except BaseException:
        lock.release()
        raise


def _refuse_orphan_chunks(folder: Path, resume: bool) -> None:
    """Chunks without a ``config.json`` (deleted, or another program's folder) cannot be
    continued or reused: nothing says which configuration they hold. A folder killed while it
    was being set up (``config.json`` is written before the first chunk) holds none."""
    chunks = folder / _runs.CHUNKS
    orphans = sorted(p.name for p in chunks.glob("chunk-*")) if chunks.is_dir() else []
    started = [n for n in ("manifest.json", "axes.json") if (folder / n).is_file()]
    if orphans or (resume and started):
        held = f"{len(orphans)} chunk(s)" if orphans else " and ".join(started)
        raise ValueError(
            f"cannot {'resume' if resume else 'write to'} {folder}: it holds {held} but no "
            "config.json, so which configuration they belong to is unknown; restore its "
            "config.json or choose another output folder."
        )


def _agree_ok(error: BaseException | None) -> None:
    """Raise ``error`` on process 0 and a ValueError on the others when process 0 failed
    (several processes must stop together: the others would wait for it forever)."""
    failed = bool(_agree(np.int32(error is not None)))
    if error is not None:
        raise error
    if failed:
        raise ValueError("process 0 stopped the sweep (its message says why).")


def _discard_corrupt_chunks(folder: Path, layout: dict, log: _InvocationLog) -> None:
    """Verify every chunk on disk (`gflow._runs.verify_chunks`); a corrupt one is named on
    stderr, recorded in the manifest and removed, so that it is computed again."""
    _, corrupt = _runs.verify_chunks(folder, layout)
    for index, reason in corrupt.items():
        print(f"gflow: {reason} Recomputing chunk {index}.", file=sys.stderr)
        shutil.rmtree(folder / _runs.CHUNKS / _runs.chunk_name(index))
        log.invocation.setdefault("chunks_discarded", []).append({"chunk": index, "reason": reason})


def _comparable(layout: dict) -> dict:
    """A layout without its status code table (a later gflow may add codes)."""
    return {k: v for k, v in json_roundtrip(layout).items() if k != "status_codes"}


def sweep(
    dataset: Dataset,
    config: RunConfig,
    *,
    out=None,
    resume: bool = False,
    devices: Sequence | None = None,
    progress: bool = False,
    command: Sequence[str] | None = None,
    report: bool = True,
    t_end: float | None = None,
) -> _runs.Run:
    """Run every point × seed of ``config`` on ``dataset``; stream chunks to ``out`` if given.

    Args:
        dataset: a `gflow.Dataset`.
        config: a `RunConfig` (points, seeds, trainer options, chunk size).
        out: run folder (created); ``None`` keeps everything in memory (no files). One process
            writes it at a time: it holds the folder's lock (`gflow._runs.lock_folder`) until
            the sweep returns, and a second sweep into the same folder meanwhile is refused
            (`gflow._runs.FolderInUseError`).
        resume: continue the run in ``out`` from its last finished chunk. Refused (``ValueError``)
            when the folder's configuration or data differ, or its ``config.json`` is gone.
            Every chunk on disk is verified first (checksums, shapes, dtypes); a corrupt one is
            named on stderr and computed again. Without ``resume`` a folder that already holds
            a run is refused.
        devices: devices of the ``'seed'`` mesh (default: all).
        progress: show a progress bar on stderr.
        command: command line recorded in the manifest (default ``sys.argv``).
        report: with ``out``, write ``summary.json``, the figures and ``report.md`` at the end.
        t_end: sgd/gd only: run every point to this flow time, with
            steps = t_end·(1−β)/η per point (`steps_to_flow_time`; docs/theory.md §1), so that
            settings with different η or β are compared at equal flow time. The number of
            records is the configuration's steps / record_every.

    Returns:
        The `gflow._runs.Run` (read back from ``out`` when given).

    Raises:
        ValueError: bad input (``out`` empty), a sweep whose estimated memory exceeds what the
            machine has (`gflow._resources.InsufficientMemory`), a folder in use or holding
            another run, or a file that cannot be written (`gflow._runs.RunFolderWriteError`,
            e.g. a full disk: the chunks already written are kept and ``resume`` continues
            after them).
        KeyboardInterrupt: on SIGINT (the manifest records the invocation as interrupted).
    """
    if not isinstance(config, RunConfig):
        raise ValueError(f"config must be a gflow RunConfig; got {type(config).__name__}.")
    if not isinstance(dataset, Dataset):
        raise ValueError(f"dataset must be a gflow Dataset; got {type(dataset).__name__}.")
    if out is not None and not str(out).strip():
        raise ValueError(f"out must name a folder; got {out!r}.")
    # Memory, before anything is allocated (gflow._resources; where the machine's memory cannot
    # be read the check is skipped).
    require_memory(
        sweep_memory(
            config,
            n_samples=dataset.n_samples,
            dim=dataset.dim,
            n_test=0 if dataset.x_test is None else int(dataset.x_test.shape[0]),
            num_devices=len(devices) if devices is not None else jax.device_count(),
        ),
        "this sweep",
    )
    # batch <= N, epochs -> steps, t_end: fail before any file or compile
    plan_sweep(config, dataset, t_end=t_end)
    record = _dataset_record(dataset)
    # Only process 0 touches the folder (several processes in a multi-host sweep); the others
    # learn from it which chunk size to use and which chunks are done.
    writer = jax.process_index() == 0
    folder = manifest = stored_layout = lock = None
    if out is not None:
        folder = Path(out)
        error = None
        if writer:
            try:
                folder, manifest, stored_layout, lock = _open_folder(out, config, record, resume)
            except ValueError as err:
                error = err
        _agree_ok(error)
    try:
        return _sweep_in(
            dataset, config, folder, manifest, stored_layout, record, writer,
            devices=devices, progress=progress, command=command, report=report, t_end=t_end,
        )  # fmt: skip
    finally:
        if lock is not None:
            lock.release()


def _sweep_in(
    dataset: Dataset,
    config: RunConfig,
    folder: Path | None,
    manifest: dict | None,
    stored_layout: dict | None,
    record: dict,
    writer: bool,
    *,
    devices,
    progress: bool,
    command,
    report: bool,
    t_end: float | None,
) -> _runs.Run:
    """`sweep` once its folder (if any) is open and locked by the writing process."""
    mesh = device_mesh(devices)
    n_devices = mesh.devices.size
    error = None
    if stored_layout is not None and stored_layout.get("t_end") != t_end:
        error = ValueError(
            f"cannot resume {folder}: it was made with t_end {stored_layout.get('t_end')} "
            f"(sgd/gd common flow time), not {t_end}."
        )
    _agree_ok(error)
    stored_chunk = int(_agree(stored_layout["chunk_size"] if stored_layout is not None else 0))
    plan = plan_sweep(config, dataset, num_devices=n_devices, t_end=t_end)
    if stored_chunk:
        if stored_chunk % n_devices:
            raise ValueError(
                f"cannot resume {folder}: its chunks hold {stored_chunk} runs, not a multiple "
                f"of the {n_devices} devices now in use."
            )
        plan = plan_sweep(
            config, dataset, num_devices=n_devices, chunk_size=stored_chunk, t_end=t_end
        )

    data = training_data(dataset, config.dtype)
    # One program per distinct member spec: one in all, or one per step count under t_end.
    specs = [
        MemberSpec.of(
            config,
            dataset.n_samples,
            dataset.dim,
            None if plan.sgd_configs is None else plan.sgd_configs[p],
            classes=dataset.classes,
        )
        for p in range(len(plan.points))
    ]
    programs: dict[MemberSpec, _Program] = {}
    for spec in specs:
        if spec not in programs:
            programs[spec] = _Program(spec, data, mesh, plan.chunk_size)
    program_of_chunk = [programs[specs[plan.point_of_chunk(i)]] for i in range(len(plan.chunks))]
    layout = _layout(plan, program_of_chunk[0].out_shapes, dataset.dim)
    if stored_layout is not None and _comparable(stored_layout) != _comparable(layout):
        error = ValueError(
            f"cannot resume {folder}: its axes.json describes a different layout than this "
            "gflow makes."
        )
    _agree_ok(error)

    log = _InvocationLog(
        folder if writer else None, manifest or _new_manifest(config, plan, record), command
    )
    log.manifest.update(
        {
            "backend": jax.default_backend(),
            "devices": [str(d) for d in mesh.devices.ravel()],
            "device_count": n_devices,
            "process_count": jax.process_count(),
            "chunks_total": len(plan.chunks),
        }
    )
    finished = np.zeros(len(plan.chunks), bool)
    if folder is not None and writer:
        if stored_layout is not None:
            _discard_corrupt_chunks(folder, json_roundtrip(layout), log)
        finished[_runs.finished_chunks(folder, len(plan.chunks))] = True
    finished = _agree(finished)
    done = np.flatnonzero(finished).tolist()
    pending = np.flatnonzero(~finished).tolist()

    if folder is not None and writer and stored_layout is None:
        _runs.write_npy_atomic(folder / "t.npy", plan.t)
        _runs.write_json_atomic(folder / "axes.json", layout)
    log.save(len(done))
    if folder is not None and writer and stored_layout is None:
        # Written last: config.json marks a complete run folder (a kill before it leaves a
        # folder that the next sweep simply starts over in).
        _runs.write_json_atomic(folder / "config.json", config.to_dict())

    bar = Progress(
        len(pending), label=f"gflow {config.trainer}", done_before=len(done), enabled=progress
    )
    if progress:
        where = f" → {folder}" if folder is not None else ""
        print(
            f"gflow {config.trainer}: {dataset.describe()}; d={config.width}; "
            f"{len(plan.points)} point(s) × {len(plan.seeds)} seed(s) in "
            f"{_runs.chunk_text({'chunks': plan.chunks})} on {n_devices} "
            f"{jax.default_backend()} device(s){where}",
            file=sys.stderr,
        )
    inputs = plan.member_inputs()
    in_memory: dict[int, tuple] = {}
    try:
        if pending:
            needed = list(dict.fromkeys(program_of_chunk[i] for i in pending))
            bar.note(
                "compiling (one program for all chunks)"
                if len(programs) == 1
                else f"compiling ({len(needed)} programs: one per step count)"
            )
            for program in needed:
                program.compile()
            log.invocation["compile_seconds"] = sum(p.compile_seconds for p in needed)
            bar.note("")
            bar.start()
        for i in pending:
            start, stop = plan.chunks[i]
            begun = time.perf_counter()
            arrays, params = _split_outputs(
                program_of_chunk[i](_chunk_columns(inputs, start, stop, plan.chunk_size)),
                stop - start,
            )
            if folder is None:
                in_memory[i] = (arrays, params)
            elif writer:
                _runs.write_chunk(folder, i, arrays, params)
            log.invocation["chunks_computed"].append(i)
            log.invocation["chunk_seconds"].append(time.perf_counter() - begun)
            log.save(len(done))
            failed = int(np.sum(arrays["status"] != OK))
            bar.update(note=f"{failed} failed run(s) in this chunk" if failed else "")
    except KeyboardInterrupt as err:
        # SIGINT, or SIGTERM where the command line turns it into an interrupt.
        signal_name = getattr(err, "signal_name", "SIGINT")
        log.finish("interrupted", len(done), signal=signal_name)
        raise
    except _runs.RunFolderWriteError as err:
        log.finish("failed", len(done), error=str(err))
        kept = len(done) + len(log.invocation["chunks_computed"])
        raise _runs.RunFolderWriteError(
            f"{err}; the {kept} chunk(s) already written are kept in {folder}: free space, then "
            "continue with resume (--resume).",
            err.errno,
        ) from None
    finally:
        bar.close()
    log.finish("finished", len(done))
    if folder is None:
        return _runs.assemble_run(
            None, config.to_dict(), log.manifest, json_roundtrip(layout), plan.t, in_memory
        )
    # Every process reads the folder only once process 0 has written all of it.
    _agree(np.int32(len(done) + len(pending)))
    run = _runs.load_run(folder)
    if writer and report:
        from . import _plots  # matplotlib is imported only when figures are drawn

        _plots.write_outputs(run)
    return run


def _new_manifest(config: RunConfig, plan: SweepPlan, record: dict) -> dict:
    return {
        "format": _runs.FORMAT,
        "versions": _runs.versions(),
        "dtype": config.dtype,
        "trainer": config.trainer,
        "seeds": list(plan.seeds),
        "points": plan.points,
        "dataset": record,
        "invocations": [],
    }


class _InvocationLog:
    """The manifest of a run folder with one more invocation (command, writer, timestamps,
    state, timings), rewritten atomically after every chunk.

    States: ``running`` while it computes, then ``finished``, ``interrupted`` (SIGINT or
    SIGTERM: ``signal`` says which) or ``failed`` (``error`` says why). An invocation still
    ``running`` when the folder is opened again was killed (its process no longer holds the
    folder's lock): it is marked ``killed``. The manifest's own ``state`` is that of its last
    invocation.
    """

    def __init__(self, folder: Path | None, manifest: dict, command: Sequence[str] | None):
        self.folder = folder
        self.manifest = manifest
        for earlier in manifest.setdefault("invocations", []):
            if isinstance(earlier, dict) and earlier.get("state") == "running":
                earlier["state"] = "killed"
        self.invocation = {
            "command": list(sys.argv if command is None else command),
            "writer": {
                "process_index": jax.process_index(),
                "pid": os.getpid(),
                "host": socket.gethostname(),
            },
            "started": _runs.now(),
            "ended": None,
            "state": "running",
            "compile_seconds": 0.0,
            "chunks_computed": [],
            "chunk_seconds": [],
        }
        manifest["invocations"].append(self.invocation)
        manifest["state"] = "running"

    def finish(self, state: str, done_before: int, **details) -> None:
        """Record the end of the invocation. After a failed write the manifest may not be
        writable either (a full disk): then it keeps its last state, and the error is raised
        by the caller."""
        self.invocation.update(ended=_runs.now(), state=state, **details)
        self.manifest["state"] = state
        try:
            self.save(done_before)
        except _runs.RunFolderWriteError:
            if state == "finished":
                raise

    def save(self, done_before: int) -> None:
        invocations = [s for s in self.manifest["invocations"] if isinstance(s, dict)]
        chunk_seconds = [x for s in invocations for x in s.get("chunk_seconds", [])]
        total = self.manifest.get("chunks_total")
        if self.folder is not None and isinstance(total, int):
            # From the disk: an interrupt can land between a chunk's rename and its record.
            finished = len(_runs.finished_chunks(self.folder, total))
        else:
            finished = done_before + len(self.invocation["chunks_computed"])
        self.manifest["chunks_finished"] = finished
        self.manifest["timings"] = {
            "compile_seconds": sum(s.get("compile_seconds") or 0.0 for s in invocations),
            "compute_seconds": float(sum(chunk_seconds)),
            "seconds_per_chunk": float(np.median(chunk_seconds)) if chunk_seconds else None,
        }
        if self.folder is not None:
            _runs.write_json_atomic(self.folder / "manifest.json", self.manifest)


def json_roundtrip(obj):
    """``obj`` as it reads back from JSON (tuples → lists), to compare with a stored file."""
    return json.loads(json.dumps(obj))

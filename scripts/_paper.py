"""Shared pieces of the scripts that reproduce the paper's experiments (Section 5, Appendix G).

Paper settings (docs/theory.md §7): SGD with mini-batches of B = 4, momentum β = 0.9, d = 300 hidden
neurons, init scale σ = 1e-5, CIFAR-10 binary (airplane + cat vs automobile + bird, grayscale).

**Learning rate.** The paper's value was lost in extraction. The default η = 0.01 advances the
gradient-flow clock by η/(1−β) = 0.1 per step. On CIFAR-10 (N = 800, d = 100, σ = 1e-5) the
time at which the loss has fallen by 5% of its total decrease was t ≈ 210, 220, 230 for
η = 0.005, 0.01, 0.02 (50%: 340, 320, 340), so at η = 0.01 SGD follows the flow's clock within
the spread of these runs while costing half the steps of η = 0.005 (`--lr` changes
it).

**End of training.** Runs stop at a fixed flow time (`--t-end`, default 800: about three times
the loss-drop time of both datasets at σ = 1e-5), so runs with different N see the same clock.

Every script takes ``--quick`` (tiny sizes, seconds; used by the test suite), ``--dataset``
(``mnist``: the embedded digits, 0–4 vs 5–9; or ``cifar:PATH`` with a ``cifar-10-batches-py``
folder or an npz in the CIFAR row layout) and ``--out DIR``, and writes PNG figures plus the
numbers behind them as JSON and CSV.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import gflow
from gflow.capacity import neuron_scores
from gflow.network import training_data
from gflow.solvers import OK, status_message
from gflow.trainers import SGDConfig, train_sgd

LEARNING_RATE = 0.01
MOMENTUM = 0.9
BATCH_SIZE = 4
SIGMA = 1e-5
WIDTH = 300
SAMPLES = 800
THRESHOLD = 0.95
FLOW_TIME = 800.0
EARLY_TIME = 50.0
PERMUTATIONS = 9999
CIFAR_TEST_PER_CLASS = 500

# One schedule for every --quick run, so that scripts run in one process share compilations.
QUICK_SAMPLES = 64
QUICK_WIDTH = 16
QUICK_TIME = 300.0
QUICK_RECORDS = 30
QUICK_SEEDS = 2
QUICK_EARLY_TIME = 30.0
QUICK_PERMUTATIONS = 999

OPTIONS = {
    "width": ("--width", int, None, f"d (default {WIDTH}; quick {QUICK_WIDTH})"),
    "samples": ("--samples", int, None, f"N (default {SAMPLES}; quick {QUICK_SAMPLES})"),
    "sigma": ("--sigma", float, SIGMA, "init scale σ (default 1e-5)"),
    "tau": ("--tau", float, THRESHOLD, f"cluster threshold (default {THRESHOLD:g})"),
}


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    """Options every experiment script shares."""
    p = argparse.ArgumentParser(
        prog=name, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes (seconds), for tests and smoke runs"
    )
    p.add_argument(
        "--dataset",
        default="mnist",
        metavar="DATASET",
        help="mnist (embedded digits, default) or cifar:PATH (cifar-10-batches-py folder or npz)",
    )
    p.add_argument("--out", default=f"gflow-out/{name}", metavar="DIR", help="output folder")
    p.add_argument(
        "--lr",
        "--learning-rate",
        dest="learning_rate",
        type=float,
        default=LEARNING_RATE,
        help=f"SGD step η (default {LEARNING_RATE})",
    )
    p.add_argument(
        "--momentum", type=float, default=MOMENTUM, help=f"momentum β (default {MOMENTUM})"
    )
    p.add_argument(
        "--batch",
        "--batch-size",
        dest="batch_size",
        type=int,
        default=BATCH_SIZE,
        help=f"mini-batch B (default {BATCH_SIZE})",
    )
    p.add_argument(
        "--t-end",
        "--time",
        dest="time",
        type=float,
        default=None,
        help=f"flow time t = kη/(1−β) to train for (default {FLOW_TIME:g}; quick {QUICK_TIME:g})",
    )
    p.add_argument("--seeds", type=int, default=None, help="seeds per configuration")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the dataset subsample")
    return p


def check_args(args) -> None:
    """Reject values no experiment can use, naming the option."""
    if not args.learning_rate > 0:
        raise SystemExit(f"--lr must be > 0; got {args.learning_rate}")
    if not 0 <= args.momentum < 1:
        raise SystemExit(f"--momentum must be in [0, 1); got {args.momentum}")
    if not args.batch_size > 0:
        raise SystemExit(f"--batch must be > 0; got {args.batch_size}")
    if args.time is not None and not args.time > 0:
        raise SystemExit(f"--t-end must be > 0; got {args.time}")
    if args.seeds is not None and not args.seeds > 0:
        raise SystemExit(f"--seeds must be > 0; got {args.seeds}")


def add_options(p: argparse.ArgumentParser, *names: str) -> None:
    """Add the named `OPTIONS` (--width, --samples, --sigma, --tau) to ``p``, in order."""
    for name in names:
        flag, kind, default, help_text = OPTIONS[name]
        p.add_argument(flag, type=kind, default=default, help=help_text)


def add_alignment_options(p: argparse.ArgumentParser, note: str = "") -> None:
    """--early-time (``note`` follows its default in the help) and --permutations."""
    p.add_argument(
        "--early-time",
        type=float,
        default=None,
        help=f"flow time of the early alignment (default {EARLY_TIME:g}{note}; "
        f"quick {QUICK_EARLY_TIME:g})",
    )
    p.add_argument(
        "--permutations",
        type=int,
        default=None,
        help=f"permutations of the p-value (default {PERMUTATIONS}; quick {QUICK_PERMUTATIONS})",
    )


def parse_checked(p: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """``argv`` parsed by ``p``, with the values `check_args` rejects refused."""
    args = p.parse_args(argv)
    check_args(args)
    return args


def comma_list(text: str | None, kind, default) -> list:
    """The comma-separated values of ``text`` as ``kind``, or ``default`` when it is empty."""
    return [kind(v) for v in text.split(",")] if text else list(default)


def flow_time_of(args) -> float:
    return args.time if args.time is not None else (QUICK_TIME if args.quick else FLOW_TIME)


def width_of(args) -> int:
    return args.width or (QUICK_WIDTH if args.quick else WIDTH)


def samples_of(args) -> int:
    return args.samples or (QUICK_SAMPLES if args.quick else SAMPLES)


def seeds_of(args, full: int, quick: int = QUICK_SEEDS) -> list[int]:
    """Seeds 0, 1, … : --seeds of them, else ``quick`` or ``full`` of them."""
    return list(range(args.seeds or (quick if args.quick else full)))


def early_time_of(args) -> float:
    if args.early_time is not None:
        return args.early_time
    return QUICK_EARLY_TIME if args.quick else EARLY_TIME


def permutations_of(args) -> int:
    return args.permutations or (QUICK_PERMUTATIONS if args.quick else PERMUTATIONS)


def sgd_options(args) -> dict:
    """The SGD keywords of `train_lanes` and `train_final` given on the command line."""
    return {
        "learning_rate": args.learning_rate,
        "momentum": args.momentum,
        "batch_size": args.batch_size,
    }


def final_steps(args) -> int:
    """SGD steps to the run's flow time."""
    return schedule(flow_time_of(args), args.learning_rate, args.momentum, 1).steps


def recorded_schedule(args, records: int, snapshot_every: int | None = None) -> SGDConfig:
    """The run's `schedule` with ``records`` records (--quick: `QUICK_RECORDS`, a snapshot at
    each), so that every quick run shares one schedule."""
    if args.quick:
        records, snapshot_every = QUICK_RECORDS, 1
    return schedule(flow_time_of(args), args.learning_rate, args.momentum, records, snapshot_every)


def load(spec: str, n_samples: int, *, seed: int = 0) -> gflow.Dataset:
    """The binary task of ``spec`` with ``n_samples`` balanced training samples."""
    if n_samples < 2 or n_samples % 2:
        raise SystemExit(f"number of training samples must be even and >= 2; got {n_samples}")
    if spec == "mnist":
        return gflow.mnist_default(n_per_class=n_samples // 2, seed=seed)
    if spec.startswith("cifar:"):
        return gflow.cifar_binary(
            spec.split(":", 1)[1],
            n_per_class=n_samples // 2,
            test_per_class=CIFAR_TEST_PER_CLASS,
            seed=seed,
        )
    raise SystemExit(f"--dataset must be 'mnist' or 'cifar:PATH'; got {spec!r}")


def training_set(args, n_samples: int):
    """The --dataset task with ``n_samples`` training samples, and its training data."""
    dataset = load(args.dataset, n_samples, seed=args.data_seed)
    return dataset, training_data(dataset)


def short_name(dataset: gflow.Dataset) -> str:
    """The dataset's name up to its first ``-`` (``mnist5k``), for titles."""
    return dataset.name.split("-")[0]


def run_label(dataset: gflow.Dataset, n_samples: int, width: int) -> str:
    return f"{short_name(dataset)}, N = {n_samples}, d = {width}"


def schedule(
    flow_time: float,
    learning_rate: float,
    momentum: float,
    records: int,
    snapshot_every: int | None = None,
) -> SGDConfig:
    """An `SGDConfig` reaching ``flow_time`` with ``records`` equally spaced records."""
    per_step = learning_rate / (1.0 - momentum)
    record_every = max(1, math.ceil(flow_time / per_step / records))
    return SGDConfig(
        steps=record_every * records, record_every=record_every, snapshot_every=snapshot_every
    )


def lane_keys(seeds) -> tuple[jax.Array, jax.Array]:
    """(init keys, mini-batch keys) ``[L]`` for integer seeds: both split from ``key(seed)``."""
    pairs = [jax.random.split(jax.random.key(int(s))) for s in seeds]
    return jnp.stack([p[0] for p in pairs]), jnp.stack([p[1] for p in pairs])


def init_lanes(seeds, sigmas, width: int, dim: int, dtype=jnp.float32) -> gflow.Params:
    """Initial parameters of each lane (seed s, init scale σ), stacked ``[L, ...]``."""
    k_init, _ = lane_keys(seeds)
    sig = jnp.asarray(np.broadcast_to(np.asarray(sigmas, dtype=np.float64), (len(seeds),)), dtype)
    return _init_lanes(k_init, sig, width, dim, dtype)


@functools.partial(jax.jit, static_argnames=("width", "dim", "dtype"))
def _init_lanes(k_init, sigmas, width: int, dim: int, dtype):
    return jax.vmap(lambda k, s: gflow.init_params(k, width, dim, s, dtype=dtype))(k_init, sigmas)


@jax.jit
def evaluate(params: gflow.Params, data) -> dict:
    """Final training loss, train and test accuracy of one network (one compilation per shape)."""
    return {
        "final_loss": gflow.loss(params, data.x, data.y),
        "train_accuracy": gflow.accuracy(params, data.x, data.y),
        "test_accuracy": gflow.accuracy(params, data.x_test, data.y_test),
    }


def train_lanes(
    data, params0: gflow.Params, seeds, *, learning_rate, momentum, batch_size, config: SGDConfig
):
    """`train_sgd` vmapped over lanes; returns the `Trajectory` (leading lane axis) and the
    indices of the lanes that finished cleanly (a diverged lane is reported, not raised)."""
    import dataclasses

    config = dataclasses.replace(config, batch_size=batch_size)
    _, k_batch = lane_keys(seeds)
    traj = jax.vmap(
        lambda p, k: train_sgd(
            p, k, data, learning_rate=learning_rate, momentum=momentum, config=config, throw=False
        )
    )(params0, k_batch)
    traj = jax.block_until_ready(traj)
    status = np.asarray(traj.status)
    if np.any(status != OK):
        print(f"warning: {status_message(status)}; those lanes are left out")
    return traj, np.nonzero(status == OK)[0]


def train_final(
    data, params0: gflow.Params, seeds, *, learning_rate, momentum, batch_size, steps: int
):
    """Final parameters only, per lane: the same SGD steps and batches as `train_sgd` with the
    same keys (`gflow.capacity.train_masked` with a mask that keeps everything), without the
    recording machinery, which dominates compile time in a sweep of shapes. Returns the final
    `Params` (leading lane axis) and the indices of the lanes whose weights stayed finite."""
    from gflow.capacity import dense_mask, train_masked

    _, k_batch = lane_keys(seeds)
    mask = dense_mask(lane(params0, 0))
    final = jax.vmap(
        lambda p, k: train_masked(
            p,
            k,
            data,
            mask,
            learning_rate=learning_rate,
            momentum=momentum,
            steps=steps,
            batch_size=batch_size,
        )
    )(params0, k_batch)
    final = jax.block_until_ready(final)
    finite = np.all(
        np.stack(
            [
                np.all(np.isfinite(np.asarray(a)).reshape(len(seeds), -1), axis=1)
                for a in jax.tree.leaves(final)
            ]
        ),
        axis=0,
    )
    if not np.all(finite):
        print(
            f"warning: {int(np.sum(~finite))} of {len(seeds)} runs diverged (non-finite weights); "
            "left out"
        )
    return final, np.nonzero(finite)[0]


def final_networks(args, data, seeds, width: int, dim: int, steps: int) -> list:
    """(seed, final `Params`) of each run that stayed finite: init at --sigma, then ``steps``
    steps of the command line's SGD (`train_final`)."""
    params0 = init_lanes(seeds, args.sigma, width, dim)
    finals, ok = train_final(data, params0, seeds, steps=steps, **sgd_options(args))
    return [(seeds[i], lane(finals, i)) for i in ok]


def nearest_record(t, time: float) -> int:
    """Index of the record whose flow time is closest to ``time``."""
    return int(np.argmin(np.abs(np.asarray(t) - time)))


def early_scores(traj, params0: gflow.Params, data, i: int, j: int):
    """Observables of lane ``i`` at record ``j``, and that lane's `neuron_scores` there."""
    early_obs = lane(lane(traj.observables, i), j)
    return early_obs, neuron_scores(lane(params0, i), early_obs, data)


def lane(tree, i: int):
    """Lane ``i`` of a stacked pytree, as NumPy arrays (slicing on the host compiles nothing)."""
    return jax.tree.map(lambda a: np.asarray(a)[i], tree)


def to_builtin(obj):
    """JSON-ready copy: NumPy scalars/arrays to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_builtin(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return to_builtin(np.asarray(obj).tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(to_builtin(obj), indent=1) + "\n")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    fields = list(rows[0]) if rows else []
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: to_builtin(v) for k, v in r.items()})
    return path


def write_outputs(
    out: Path, name: str, rows: list[dict], record: dict, checks: dict, clock: Clock
) -> int:
    """``name``.csv (``rows``) and ``name``.json (``record``, ``checks``, ``clock``'s timings);
    returns the exit status, 0 when every check holds."""
    write_csv(out / f"{name}.csv", rows)
    write_json(out / f"{name}.json", {**record, "checks": checks, "seconds": clock.seconds})
    return 0 if all(checks.values()) else 1


def figure(ncols: int = 1, *, width: float = 4.6, height: float = 3.6):
    """A matplotlib figure on the Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path


def prepare_out(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


class Clock:
    """Wall-clock seconds of named phases (reported in every JSON)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._start, 2)
        self._start = now


def settings(args, **extra) -> dict:
    """The run's settings, for the JSON record."""
    return {
        "dataset": args.dataset,
        "quick": args.quick,
        "learning_rate": args.learning_rate,
        "momentum": args.momentum,
        "batch_size": args.batch_size,
        "flow_time": flow_time_of(args),
        "data_seed": args.data_seed,
        "jax_backend": jax.default_backend(),
        **extra,
    }

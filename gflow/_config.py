"""The resolved configuration of a run or sweep: what is simulated, validated once, at construction.

A `RunConfig` names everything that determines the numbers of a run folder: the data options,
the width d and init scale σ, the trainer and its options, the dtype, the seeds and the
seed-chunk size. ``sigma``, ``lr`` and ``momentum`` are tuples: a sweep runs their Cartesian
product ("points", σ-major), each for every seed. Keys that do not apply to the chosen trainer
are ``None`` and may not be set. Each trainer's keys and defaults (all three cover the flow time
t = k·η/(1−β) = 300, docs/theory.md §1) and the TOML configuration file: docs/numerics.md §5.

Example:
    >>> cfg = RunConfig(trainer="gd", width=8, sigma=1e-3, lr=(0.05, 0.1), seeds="0:4")
    >>> len(cfg.points()), cfg.seeds
    (2, (0, 1, 2, 3))
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._data import PREPROCESS_MODES, parse_classes
from ._flow import SLIDING, FlowConfig, check_time_grid
from ._network import LOSSES, Model, parse_activation
from ._sgd import SGDConfig
from ._validation import is_int as _is_int
from ._validation import non_negative_int as _non_negative_int
from ._validation import positive_int as _positive_int
from ._validation import positive_real as _positive_real
from ._validation import real as _real

TRAINERS = ("sgd", "gd", "flow")
DTYPES = ("float32", "float64")
MAX_SEED = 2**31 - 1

_COMMON_KEYS = (
    "trainer",
    "dataset",
    "classes",
    "loss",
    "activation",
    "n_per_class",
    "preprocess",
    "data_seed",
    "width",
    "sigma",
    "orthogonal_init",
    "dtype",
    "seeds",
    "chunk_size",
)
TRAINER_DEFAULTS: dict[str, dict] = {
    "sgd": {
        "lr": (0.01,),
        "momentum": (0.9,),
        "batch": 4,
        "steps": 3000,
        "epochs": None,
        "record_every": 10,
    },
    "gd": {"lr": (0.1,), "momentum": (0.0,), "steps": 3000, "epochs": None, "record_every": 10},
    "flow": {
        "t_end": 300.0,
        "save_points": 301,
        "t_grid": None,
        # The solver options default to FlowConfig's own defaults: one default per option.
        **{
            k: getattr(FlowConfig, k)
            for k in (
                "solver",
                "rtol",
                "atol",
                "dt0",
                "max_steps",
                "sliding_capacity",
                "sliding_halvings",
            )
        },
    },
}
COMMON_DEFAULTS = {
    "dataset": "mnist",
    "classes": None,
    "loss": "cross_entropy",
    "activation": "relu",
    "n_per_class": None,
    "preprocess": "center-unit",
    "data_seed": 0,
    "width": 50,
    "sigma": (1e-5,),
    "orthogonal_init": False,
    "dtype": "float32",
    "seeds": (0,),
    "chunk_size": 16,
}


def _real_tuple(name: str, value) -> tuple[float, ...]:
    """A scalar or a non-empty list of reals, as a tuple without repeats."""
    items = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if not items:
        raise ValueError(
            f"{name} must be a number or a non-empty list of numbers; got an empty list."
        )
    values = tuple(_real(name, v) for v in items)
    if len(set(values)) != len(values):
        raise ValueError(f"{name} lists a value twice: {list(values)}.")
    return values


def parse_seeds(value) -> tuple[int, ...]:
    """Seeds from an int, ``"A:B"`` (A, A+1, ..., B−1), ``"1,5,9"``, or a list of ints.

    Seeds are distinct integers in [0, 2³¹ − 1].

    Example:
        >>> parse_seeds("0:3"), parse_seeds("4,2"), parse_seeds(7)
        ((0, 1, 2), (4, 2), (7,))
    """
    allowed = "an integer, 'A:B' (A, ..., B-1), 'A,B,C' or a list of integers"
    if isinstance(value, str):
        text = value.strip()
        try:
            if ":" in text:
                start, stop = (int(p) for p in text.split(":"))
                if stop <= start:
                    raise ValueError(f"seeds range {text!r} is empty: B must exceed A in 'A:B'.")
                seeds = list(range(start, stop))
            else:
                seeds = [int(p) for p in text.split(",")]
        except ValueError as err:
            if "empty" in str(err):
                raise
            raise ValueError(f"seeds must be {allowed}; got {value!r}.") from None
    elif _is_int(value):
        seeds = [int(value)]
    elif (
        isinstance(value, (list, tuple, range, np.ndarray))
        and len(value)
        and all(_is_int(s) for s in value)
    ):
        seeds = [int(s) for s in value]
    else:
        raise ValueError(f"seeds must be {allowed}; got {value!r}.")
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise ValueError(f"seeds must lie in [0, {MAX_SEED}]; got {bad[:5]}.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct; got repeats in {seeds[:20]}.")
    return tuple(seeds)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines the numbers of a run or sweep (docs/numerics.md §5).

    Fields left ``None`` take the trainer's default; fields that do not apply to the trainer
    must stay ``None``. Construction validates every value and raises ``ValueError`` naming the
    field, the value and what is allowed.

    Attributes:
        trainer: ``"sgd"`` (mini-batch SGD with momentum), ``"gd"`` (full batch) or ``"flow"``
            (the ODE θ̇ = −∇L, docs/theory.md §1).
        dataset, classes, n_per_class, preprocess, data_seed: data options of ``gflow
            --dataset`` (spec string, ``"A/B"`` digit grouping, or ``"A/B/C…"`` for K ≥ 3
            classes, samples per class, mode, seed).
        loss: ``"cross_entropy"`` (softmax, the paper's) or ``"square"`` (`gflow.Model`).
        activation: ``"relu"`` (the paper's), ``"leaky_relu:α"`` or ``"softplus:β"``.
        width: hidden width d.
        sigma: init scales σ (``W, V ~ N(0, σ²)``, ``b = 0``); a tuple is swept.
        orthogonal_init: mutually orthogonal rows of W at init.
        lr, momentum: η and β (sgd, gd); tuples are swept.
        batch: mini-batch size B (sgd).
        steps, epochs: run length (sgd, gd), one of the two; an epoch is ⌊N/B⌋ SGD steps or one
            GD step.
        record_every: observables every this many steps (must divide the step count).
        t_end, save_points: flow save grid ``linspace(0, t_end, save_points)``; or
        t_grid: an explicit, strictly increasing save grid (flow).
        solver, rtol, atol, dt0, max_steps: ODE options (`gflow.FlowConfig`).
        sliding_capacity, sliding_halvings: the sliding solver's K and halvings
            (`gflow.FlowConfig`; None: its defaults).
        dtype: ``"float32"`` or ``"float64"``.
        seeds: one run per seed and point: int, ``"A:B"``, ``"A,B"`` or a list.
        chunk_size: runs per compiled batch (rounded up to a multiple of the device count);
            bounds memory however many seeds.
    """

    trainer: str = "sgd"
    dataset: str | None = None
    classes: str | None = None
    loss: str | None = None
    activation: str | None = None
    n_per_class: int | None = None
    preprocess: str | None = None
    data_seed: int | None = None
    width: int | None = None
    sigma: tuple[float, ...] | None = None
    orthogonal_init: bool | None = None
    lr: tuple[float, ...] | None = None
    momentum: tuple[float, ...] | None = None
    batch: int | None = None
    steps: int | None = None
    epochs: int | None = None
    record_every: int | None = None
    t_end: float | None = None
    save_points: int | None = None
    t_grid: tuple[float, ...] | None = None
    solver: str | None = None
    rtol: float | None = None
    atol: float | None = None
    dt0: float | None = None
    max_steps: int | None = None
    sliding_capacity: int | None = None
    sliding_halvings: int | None = None
    dtype: str | None = None
    seeds: tuple[int, ...] | None = None
    chunk_size: int | None = None

    def __post_init__(self):
        if self.trainer not in TRAINERS:
            raise ValueError(
                f"trainer must be one of {', '.join(map(repr, TRAINERS))}; got {self.trainer!r}."
            )
        own = TRAINER_DEFAULTS[self.trainer]
        foreign = [
            k
            for k in keys()
            if k not in _COMMON_KEYS and k not in own and getattr(self, k) is not None
        ]
        if foreign:
            raise ValueError(
                f"{', '.join(foreign)} do{'es' if len(foreign) == 1 else ''} not apply to trainer "
                f"{self.trainer!r}; its keys are: {', '.join(own)}."
            )
        values = {k: getattr(self, k) for k in keys()}
        if self.trainer in ("sgd", "gd") and values["epochs"] is not None:
            if values["steps"] is not None:
                raise ValueError(
                    f"give steps or epochs, not both; got steps={values['steps']}, "
                    f"epochs={values['epochs']}."
                )
            own = {**own, "steps": None}
        if self.trainer == "flow" and values["t_grid"] is not None:
            given = [k for k in ("t_end", "save_points") if values[k] is not None]
            if given:
                raise ValueError(
                    "t_grid replaces t_end and save_points; got both t_grid and "
                    f"{', '.join(given)}."
                )
            own = {**own, "t_end": None, "save_points": None}
        for k, default in {**COMMON_DEFAULTS, **own}.items():
            if values[k] is None:
                values[k] = default
        for k, v in _normalise(values).items():
            object.__setattr__(self, k, v)

    # ---------------------------------------------------------------- constructors, views

    @classmethod
    def from_mapping(cls, mapping: Mapping, *, source: str = "configuration") -> RunConfig:
        """Build from a dict (e.g. a TOML file's table); unknown keys are rejected with the list
        of allowed keys. ``-`` in a key stands for ``_``."""
        data = {str(k).replace("-", "_"): v for k, v in mapping.items()}
        unknown = sorted(set(data) - set(keys()))
        if unknown:
            raise ValueError(
                f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in "
                f"{source}; "
                f"allowed keys: {', '.join(keys())}."
            )
        nested = [k for k, v in data.items() if isinstance(v, Mapping)]
        if nested:
            raise ValueError(f"{nested[0]} in {source} must be a value, not a table.")
        return cls(**data)

    def to_dict(self) -> dict:
        """JSON-ready dict of every key (tuples become lists; keys that do not apply are None)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def points(self) -> list[dict]:
        """The swept hyper-parameter points: the product sigma × lr × momentum (σ-major).

        Each point is ``{"sigma": σ, "lr": η, "momentum": β}`` (``lr``/``momentum`` None for
        the flow).
        """
        lrs = self.lr if self.lr is not None else (None,)
        moms = self.momentum if self.momentum is not None else (None,)
        sigmas = self.sigma
        assert sigmas is not None  # set by __post_init__
        return [
            {"sigma": s, "lr": lr, "momentum": m}
            for s, lr, m in itertools.product(sigmas, lrs, moms)
        ]

    def model(self) -> Model:
        """The `Model` of this run: its activation and loss."""
        return dataclasses.replace(parse_activation(str(self.activation)), loss=str(self.loss))

    def num_classes(self) -> int:
        """K, the number of classes the ``classes`` grouping makes (2 without one)."""
        return 2 if self.classes is None else self.classes.count("/") + 1

    def data_options(self) -> dict:
        """The data keys (dataset, classes, n_per_class, preprocess, data_seed)."""
        return {
            k: getattr(self, k)
            for k in ("dataset", "classes", "n_per_class", "preprocess", "data_seed")
        }

    def num_steps(self, n_samples: int) -> int:
        """Optimiser steps k of an SGD/GD run on N samples (``epochs`` converted)."""
        if self.trainer == "flow":
            raise ValueError("num_steps applies to trainers 'sgd' and 'gd', not 'flow'.")
        if self.batch is not None and self.batch > n_samples:
            raise ValueError(
                f"batch ({self.batch}) must not exceed the number of training samples N "
                f"({n_samples})."
            )
        if self.steps is not None:
            return self.steps
        epochs, every = self.epochs, self.record_every
        assert epochs is not None and every is not None  # set by __post_init__
        per_epoch = n_samples // self.batch if self.trainer == "sgd" and self.batch else 1
        steps = epochs * per_epoch
        if steps % every:
            raise ValueError(
                f"epochs={self.epochs} make {steps} steps ({per_epoch} per epoch), not a multiple "
                "of "
                f"record_every={self.record_every}; choose record_every dividing {steps}."
            )
        return steps

    def sgd_config(self, n_samples: int) -> SGDConfig:
        """The static `SGDConfig` of this run on N samples."""
        assert self.record_every is not None  # set by __post_init__
        return SGDConfig(
            steps=self.num_steps(n_samples),
            record_every=self.record_every,
            batch_size=self.batch if self.trainer == "sgd" else None,
        )

    def flow_config(self) -> FlowConfig:
        """The static `FlowConfig` of this run."""
        assert self.solver is not None and self.rtol is not None and self.max_steps is not None
        return FlowConfig(
            solver=self.solver,
            rtol=self.rtol,
            atol=self.atol,
            dt0=self.dt0,
            max_steps=self.max_steps,
            adaptive=self.solver != SLIDING,
            sliding_capacity=self.sliding_capacity,
            sliding_halvings=self.sliding_halvings,
        )

    def save_times(self) -> np.ndarray:
        """The flow's save grid ``[T]`` (float64)."""
        if self.t_grid is not None:
            return np.asarray(self.t_grid, dtype=np.float64)
        assert self.t_end is not None and self.save_points is not None  # set by __post_init__
        return np.linspace(0.0, self.t_end, self.save_points)


def keys() -> tuple[str, ...]:
    """Every configuration key, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(RunConfig))


def trainer_keys(trainer: str) -> tuple[str, ...]:
    """The keys that apply to ``trainer`` (common keys first)."""
    return _COMMON_KEYS + tuple(TRAINER_DEFAULTS[trainer])


def _normalise(v: dict) -> dict:
    """Check and coerce every value (all defaults filled in); returns the new values."""
    out = dict(v)
    if not isinstance(v["dataset"], str) or not v["dataset"].strip():
        raise ValueError(
            "dataset must be a spec string such as 'mnist', 'clusters' or 'npz:PATH'; got "
            f"{v['dataset']!r}."
        )
    if v["classes"] is not None:
        if not isinstance(v["classes"], str):
            raise ValueError(
                "classes must look like '0,1,2,3,4/5,6,7,8,9' (class 1 / class 2; one "
                f"'/'-separated group per class); got {v['classes']!r}."
            )
        parse_classes(v["classes"])
    if v["loss"] not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {v['loss']!r}.")
    if not isinstance(v["activation"], str):
        raise ValueError(
            f"activation must look like relu, leaky_relu:ALPHA or softplus:BETA; got "
            f"{v['activation']!r}."
        )
    parse_activation(v["activation"])
    if v["n_per_class"] is not None:
        out["n_per_class"] = _positive_int("n_per_class", v["n_per_class"])
    if v["preprocess"] not in PREPROCESS_MODES:
        raise ValueError(
            f"preprocess must be one of {', '.join(PREPROCESS_MODES)}; got {v['preprocess']!r}."
        )
    out["data_seed"] = _non_negative_int("data_seed", v["data_seed"])
    out["width"] = _positive_int("width", v["width"])
    out["sigma"] = _real_tuple("sigma", v["sigma"])
    bad = [s for s in out["sigma"] if not s > 0]
    if bad:
        raise ValueError(f"sigma must be > 0 (the init scale); got {bad[0]!r}.")
    if not isinstance(v["orthogonal_init"], (bool, np.bool_)):
        raise ValueError(f"orthogonal_init must be true or false; got {v['orthogonal_init']!r}.")
    out["orthogonal_init"] = bool(v["orthogonal_init"])
    if v["dtype"] not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {v['dtype']!r}.")
    out["seeds"] = parse_seeds(v["seeds"])
    out["chunk_size"] = _positive_int("chunk_size", v["chunk_size"])
    trainer = v["trainer"]
    if trainer in ("sgd", "gd"):
        out["lr"] = _real_tuple("lr", v["lr"])
        out["momentum"] = _real_tuple("momentum", v["momentum"])
        for lr in out["lr"]:
            if not lr > 0:
                raise ValueError(f"lr must be > 0 (the learning rate η); got {lr!r}.")
        for m in out["momentum"]:
            if not 0 <= m < 1:
                raise ValueError(f"momentum must be in [0, 1) (β of SGD with momentum); got {m!r}.")
        if trainer == "sgd":
            out["batch"] = _positive_int("batch", v["batch"])
        out["record_every"] = _positive_int("record_every", v["record_every"])
        if v["epochs"] is not None:
            out["epochs"] = _positive_int("epochs", v["epochs"])
        else:
            out["steps"] = _positive_int("steps", v["steps"])
            if out["steps"] % out["record_every"]:
                raise ValueError(
                    f"steps ({out['steps']}) must be a multiple of record_every "
                    f"({out['record_every']})."
                )
    else:
        if v["t_grid"] is not None:
            items = (
                v["t_grid"] if isinstance(v["t_grid"], (list, tuple, np.ndarray)) else [v["t_grid"]]
            )
            grid = tuple(_real("t_grid", t) for t in items)
            check_time_grid(grid, "t_grid")
            out["t_grid"] = grid
        else:
            out["t_end"] = _positive_real("t_end", v["t_end"])
            points = v["save_points"]
            if not _is_int(points) or points < 2:
                raise ValueError(f"save_points must be an integer >= 2; got {points!r}.")
            out["save_points"] = int(points)
        if not isinstance(v["solver"], str):
            raise ValueError(f"solver must be a name such as 'tsit5'; got {v['solver']!r}.")
        out["rtol"] = _positive_real("rtol", v["rtol"])
        out["atol"] = None if v["atol"] is None else _positive_real("atol", v["atol"])
        out["dt0"] = None if v["dt0"] is None else _positive_real("dt0", v["dt0"])
        out["max_steps"] = _positive_int("max_steps", v["max_steps"])
        for name in ("sliding_capacity", "sliding_halvings"):  # checked by FlowConfig below
            if _is_int(v[name]):
                out[name] = int(v[name])
        FlowConfig(
            solver=out["solver"],
            rtol=out["rtol"],
            atol=out["atol"],
            dt0=out["dt0"],
            max_steps=out["max_steps"],
            adaptive=out["solver"] != SLIDING,
            sliding_capacity=out["sliding_capacity"],
            sliding_halvings=out["sliding_halvings"],
        )
    return out


def read_config_file(path) -> dict:
    """Read a TOML configuration file into a dict (standard-library ``tomllib``).

    Raises ``ValueError`` naming the file for a missing, unreadable or malformed file.
    """
    p = Path(path)
    try:
        text = p.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"config file not found: {p}") from None
    except IsADirectoryError:
        raise ValueError(f"config path is a directory, expected a TOML file: {p}") from None
    except OSError as err:
        raise ValueError(f"cannot read config file {p}: {err.strerror}") from None
    try:
        return tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"config file {p} is not UTF-8 text (TOML expected).") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {p} is not valid TOML: {err}") from None


# Keys a configuration written before they existed lacks: it meant their defaults.
_LATER_KEYS = {
    "loss": COMMON_DEFAULTS["loss"],
    "activation": COMMON_DEFAULTS["activation"],
    "sliding_capacity": None,
    "sliding_halvings": None,
}


def config_differences(stored: Mapping, requested: Mapping) -> list[str]:
    """``key: stored → requested`` for each key whose value differs between two config dicts
    (a key a stored configuration lacks, from before it existed, counts as its default)."""
    stored = {**_LATER_KEYS, **stored}
    names = sorted(set(stored) | set(requested))
    return [
        f"{k}: {stored.get(k)!r} there, {requested.get(k)!r} requested"
        for k in names
        if stored.get(k) != requested.get(k)
    ]

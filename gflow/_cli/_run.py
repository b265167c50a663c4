"""``gflow run``: one configuration (one seed), simulated, written to a run folder with figures.

The options shared with ``gflow sweep`` live here too: a TOML ``--config`` file read first,
then flags on top (flags win), resolved into one validated `gflow.RunConfig`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..datasets import dataset_from_options
from ..runs import (
    InsufficientMemory,
    count_seed_range,
    require_memory,
    seeds_memory,
    sweep_memory,
)
from ..solvers import DEFAULT_SLIDING_CAPACITY, DEFAULT_SLIDING_HALVINGS
from ._common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    UsageError,
    add_command,
    add_dataset_options,
    add_numerics_options,
    add_output_options,
    apply_dtype,
)

_CONFIG_TEMPLATE = """\
config file (TOML; keys are the long options with _ for -, flags override the file):
  trainer = "sgd"          # sgd | gd | flow
  dataset = "mnist"
  width = 50
  sigma = 1e-5
  lr = 0.01
  momentum = 0.9
  batch = 4
  steps = 3000
  record_every = 10
"""

RUN_EPILOG = f"""examples:
  gflow run                                   # SGD (B=4, β=0.9) on the embedded MNIST digits
  gflow run --trainer flow --t-end 200 --rtol 1e-4 --out runs/ode
  gflow run --trainer gd --lr 0.05 --steps 6000 --record-every 20 --seed 3
  gflow run --lr 0.02 --t-end 250             # SGD to flow time 250: steps = t(1−β)/η
  gflow run --dataset clusters --n-per-class 50 --width 16 --sigma 1e-3 --steps 600 --quiet
  gflow run --config my.toml --lr 0.02         # the file, with the learning rate replaced
  gflow figures runs/ode                      # re-draw the figures and report of a run folder

{_CONFIG_TEMPLATE}
output: DIR/report.md (figures and numbers), DIR/figures/*.png, observables as .npy under
DIR/chunks/, everything loadable with gflow.load_run(DIR). Without --out, a fresh folder
gflow-out/run, gflow-out/run-2, ... is used. Exit status 0 when the run finished cleanly, 1 when
it diverged, the ODE solve failed or the network died (every ReLU inactive on every sample; the
folder records why), 2 for bad input, 130 on SIGINT and 143 on SIGTERM (finished chunks kept).
"""


# --------------------------------------------------------------------------- value parsers


def _real(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def real_list(text: str) -> tuple[float, ...]:
    """``"1e-5,1e-4"`` → (1e-5, 1e-4)."""
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 1e-5,1e-4; got {text!r}"
        )
    return tuple(_real(p) for p in parts)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


# --------------------------------------------------------------------------- options


def add_config_options(parser: argparse.ArgumentParser, *, sweep: bool) -> None:
    """Every `RunConfig` key as a flag (list-valued for a sweep), plus --config."""
    from gflow.runs import COMMON_DEFAULTS, TRAINER_DEFAULTS

    sgd, gd, flow = TRAINER_DEFAULTS["sgd"], TRAINER_DEFAULTS["gd"], TRAINER_DEFAULTS["flow"]
    number = real_list if sweep else _real
    many = " (comma-separated list to sweep)" if sweep else ""
    parser.add_argument(
        "--config", metavar="FILE", help="TOML file of configuration keys (flags override it)"
    )
    model = parser.add_argument_group("model and trainer")
    model.add_argument(
        "--trainer",
        metavar="{sgd,gd,flow}",
        help="sgd: mini-batch SGD with momentum (default); gd: full-batch gradient descent; "
        "flow: the gradient-flow ODE solved with diffrax",
    )
    model.add_argument(
        "--width",
        "-d",
        type=_integer,
        metavar="D",
        help=f"hidden width d (default {COMMON_DEFAULTS['width']})",
    )
    model.add_argument(
        "--sigma",
        type=number,
        metavar="S",
        help="init scale σ: W, V ~ N(0, σ²), b = 0 "
        f"(default {COMMON_DEFAULTS['sigma'][0]:g}){many}",
    )
    model.add_argument(
        "--loss",
        metavar="{cross_entropy,square}",
        help="softmax cross-entropy (default, the paper's) or the square loss ½‖o − e_c‖²",
    )
    model.add_argument(
        "--activation",
        metavar="ACT",
        help="relu (default, the paper's), leaky_relu:ALPHA (slope α on z < 0) or "
        "softplus:BETA (log(1 + e^{βz})/β); the theory's closed forms are the paper's for relu "
        "with cross-entropy (docs/theory.md §10)",
    )
    model.add_argument(
        "--orthogonal-init",
        action="store_true",
        default=None,
        help="mutually orthogonal initial directions of the rows of W",
    )
    disc = parser.add_argument_group("sgd and gd")
    disc.add_argument(
        "--lr",
        type=number,
        metavar="ETA",
        help=f"learning rate η (default {sgd['lr'][0]:g} sgd, {gd['lr'][0]:g} gd){many}",
    )
    disc.add_argument(
        "--momentum",
        type=number,
        metavar="BETA",
        help=f"momentum β in [0, 1) (default {sgd['momentum'][0]:g} sgd, "
        f"{gd['momentum'][0]:g} gd){many}",
    )
    disc.add_argument(
        "--batch",
        type=_integer,
        metavar="B",
        help=f"mini-batch size, sgd only (default {sgd['batch']})",
    )
    disc.add_argument(
        "--steps",
        type=_integer,
        metavar="K",
        help=f"optimiser steps (default {sgd['steps']}: flow time t = Kη/(1−β) = 300 with the "
        "defaults); or --t-end",
    )
    disc.add_argument(
        "--epochs", type=_integer, metavar="E", help="run length in epochs instead of --steps"
    )
    disc.add_argument(
        "--record-every",
        type=_integer,
        metavar="R",
        help="record observables every R steps; R must divide the steps "
        f"(default {sgd['record_every']})",
    )
    ode = parser.add_argument_group("flow (--t-end and --save-points also sgd and gd)")
    ode.add_argument(
        "--t-end",
        type=_real,
        metavar="T",
        help=f"final flow time (default {flow['t_end']:g}); for sgd/gd, every point runs to "
        "flow time T: steps = T(1−β)/η each, so settings meet at equal flow time",
    )
    ode.add_argument(
        "--save-points",
        type=_integer,
        metavar="N",
        help=f"records on linspace(0, T, N) (default {flow['save_points']}; sgd/gd: with --t-end)",
    )
    ode.add_argument(
        "--t-grid",
        type=real_list,
        metavar="T0,T1,...",
        help="explicit increasing save times instead of --t-end/--save-points",
    )
    ode.add_argument(
        "--solver",
        metavar="NAME",
        help="tsit5 (default), dopri5, dopri8, bosh3, heun, ralston, midpoint, euler; or the "
        "implicit gauss1 (midpoint) / gauss2, which conserve the balance Q_i for any step; or "
        "sliding, the "
        "sliding-mode integrator of the nonsmooth flow (constant steps --dt0; docs/theory.md §8)",
    )
    ode.add_argument(
        "--rtol", type=_real, metavar="TOL", help=f"relative tolerance (default {flow['rtol']:g})"
    )
    ode.add_argument(
        "--atol",
        type=_real,
        metavar="TOL",
        help="absolute tolerance (default: rtol × RMS of the initial weights)",
    )
    ode.add_argument(
        "--dt0", type=_real, metavar="DT", help="initial step; the step of fixed-step solvers"
    )
    ode.add_argument(
        "--max-steps",
        type=_integer,
        metavar="N",
        help=f"solver step limit (default {flow['max_steps']})",
    )
    ode.add_argument(
        "--sliding-capacity",
        type=_integer,
        metavar="K",
        help="sliding solver: most pairs of one neuron on or reaching their gate boundaries in "
        f"one step (default {DEFAULT_SLIDING_CAPACITY})",
    )
    ode.add_argument(
        "--sliding-halvings",
        type=_integer,
        metavar="L",
        help="sliding solver: times a step with more than K such pairs is taken again at half "
        f"length before the run stops with an overflow status (default "
        f"{DEFAULT_SLIDING_HALVINGS})",
    )
    add_dataset_options(parser)
    add_numerics_options(parser)
    runs = parser.add_argument_group("seeds")
    if sweep:
        runs.add_argument(
            "--seeds", metavar="A:B", help="seeds A..B-1, or a list 0,3,7 (default 0:1)"
        )
        runs.add_argument(
            "--chunk-size",
            type=_integer,
            metavar="C",
            help="runs per compiled batch; bounds memory "
            f"(default {COMMON_DEFAULTS['chunk_size']}, rounded up to a multiple of the device "
            "count)",
        )
    else:
        runs.add_argument(
            "--seed",
            type=_integer,
            metavar="S",
            help="seed of the initial weights and batch order (default 0)",
        )
    add_output_options(parser, default=f"gflow-out/{'sweep' if sweep else 'run'}[-N]")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last finished chunk (refused if the "
        "configuration differs)",
    )


def suppress_defaults(parser: argparse.ArgumentParser) -> None:
    """Leave unset options out of the namespace, so that only given flags override the file."""
    for action in parser._actions:
        if action.dest not in ("help", "handler") and action.option_strings:
            action.default = argparse.SUPPRESS


def resolve_config(args: argparse.Namespace, *, sweep: bool):
    """The `RunConfig` of a command line: the --config file, then the flags on top."""
    return resolve_run(args, sweep=sweep)[0]


def resolve_run(args: argparse.Namespace, *, sweep: bool):
    """``(RunConfig, t_end)``: the --config file, then the flags on top.

    For sgd/gd, ``t_end`` (flag or file key) is not a RunConfig key but the common flow time of
    every point (`gflow._sweep.steps_to_flow_time`); ``--save-points N`` then sets the number
    of records (N − 1 intervals, default as for the flow), and --steps/--epochs are refused.
    """
    from gflow.runs import TRAINER_DEFAULTS, RunConfig, keys, read_config_file

    values: dict = {}
    source = "the command line"
    if getattr(args, "config", None) is not None:
        values = {str(k).replace("-", "_"): v for k, v in read_config_file(args.config).items()}
        source = f"config file {args.config}"
    flags = {k: v for k, v in vars(args).items() if k in keys()}
    if not sweep and "seed" in vars(args):
        flags["seeds"] = args.seed
    values.update(flags)
    t_end = None
    if values.get("trainer", "sgd") in ("sgd", "gd") and values.get("t_end") is not None:
        t_end = values.pop("t_end")
        given = [k for k in ("steps", "epochs", "record_every") if values.get(k) is not None]
        if given:
            flags_given = ", ".join("--" + k.replace("_", "-") for k in given)
            raise UsageError(
                f"--t-end sets the steps of every point (t·(1−β)/η) and --save-points the "
                f"records; drop {flags_given}."
            )
        if not (isinstance(t_end, (int, float)) and t_end > 0):
            raise UsageError(f"--t-end must be a flow time > 0; got {t_end!r}")
        points = values.pop("save_points", None)
        if points is None:
            points = TRAINER_DEFAULTS["flow"]["save_points"]
        if not (isinstance(points, int) and points >= 2):
            raise UsageError(f"--save-points must be an integer >= 2; got {points!r}")
        values.update(steps=points - 1, record_every=1)  # the record grid; steps per point follow
    seed_count = count_seed_range(values.get("seeds"))
    if seed_count is not None:  # before RunConfig builds them; the full check follows in execute
        require_memory(seeds_memory(seed_count), f"--seeds {values['seeds']}")
    config = RunConfig.from_mapping(values, source=source)
    n_seeds = len(config.seeds or ())
    if not sweep and (len(config.points()) > 1 or n_seeds > 1):
        raise UsageError(
            "gflow run simulates one configuration: sigma, lr, momentum and seeds take one value "
            f"each (got {len(config.points())} points × {n_seeds} seeds); use gflow "
            "sweep for lists."
        )
    return config, t_end


def _fresh_folder(base: str, resume: bool) -> Path:
    """``base``, or ``base-2``, ``base-3``... : the first that holds no run (``base`` to resume)."""
    from gflow.runs import is_run_folder

    if resume:
        return Path(base)
    candidate, k = Path(base), 1
    while is_run_folder(candidate):
        k += 1
        candidate = Path(f"{base}-{k}")
    return candidate


def _summary_lines(run, folder: Path, summary: list[dict]) -> list[str]:
    from gflow.runs import drop_text, unequal_flow_times

    total, ok = run.status.size, int(run.ok.sum())
    lines = [f"{total} run(s), {ok} ok  →  {folder}"]
    for s in summary:

        def med(key, spec=".3g"):
            value = s[key]["median"]
            return "–" if value is None else format(value, spec)

        lines.append(
            f"  {s['label']} (t = 0..{s['flow_time']:.4g}, {med('num_steps', '.0f')} steps): "
            f"{s['ok']}/{s['seeds']} ok | final loss {med('final_loss')} | train acc "
            f"{med('train_accuracy')} | test acc {med('test_accuracy')} | "
            f"{drop_text(s)} | balance drift {med('balance_drift', '.1e')} | race winners "
            f"{med('race_winners', '.0f')}"
        )
        for f in s["failed"][:5]:
            lines.append(f"    seed {f['seed']}: {f['status_message']}")
        if len(s["failed"]) > 5:
            lines.append(f"    ... {len(s['failed']) - 5} more failed seeds (see report.md)")
    warning = unequal_flow_times(summary)
    if warning:
        lines.append(f"note: {warning}")
    lines.append(f"report: {folder / 'report.md'}")
    return lines


def _check_memory(config, dataset, command: str) -> None:
    """Refuse, before anything is allocated or compiled, a run that cannot fit in memory
    (`gflow._resources.sweep_memory`); say so when the machine's memory cannot be read."""
    import jax

    estimate = sweep_memory(
        config,
        n_samples=dataset.n_samples,
        dim=dataset.dim,
        n_test=0 if dataset.x_test is None else int(dataset.x_test.shape[0]),
        num_devices=jax.device_count(),
    )
    note = require_memory(estimate, f"this {command}")
    if note is not None:
        print(f"gflow {command}: note: {note}", file=sys.stderr)


def execute(args: argparse.Namespace, *, sweep: bool) -> int:
    """Resolve the configuration, load the data, run, write the folder, print the summary.

    Memory is estimated before anything is allocated or compiled (`_check_memory`); a
    ``MemoryError`` the estimate did not foresee is still reported in one line (exit 2).
    """
    try:
        return _execute(args, sweep=sweep)
    except MemoryError:
        raise InsufficientMemory(
            "ran out of memory (more than the estimate before the start foresaw); ask for fewer "
            "seeds, records (--steps, --record-every, --save-points), a smaller --width or "
            "--chunk-size."
        ) from None


def _execute(args: argparse.Namespace, *, sweep: bool) -> int:
    from gflow.runs import summarize
    from gflow.runs import sweep as run_sweep

    config, t_end = resolve_run(args, sweep=sweep)
    apply_dtype(argparse.Namespace(dtype=config.dtype))
    quiet = getattr(args, "quiet", False)
    resume = getattr(args, "resume", False)
    out = args.out if "out" in vars(args) else None
    folder = (
        Path(out)
        if out is not None
        else _fresh_folder(f"gflow-out/{'sweep' if sweep else 'run'}", resume)
    )
    dataset = dataset_from_options(**config.data_options())
    _check_memory(config, dataset, "sweep" if sweep else "run")
    run = run_sweep(dataset, config, out=folder, resume=resume, progress=not quiet, t_end=t_end)
    print("\n".join(_summary_lines(run, folder, summarize(run))))
    return EXIT_OK if bool(run.ok.any()) else EXIT_CHECK_FAILED


def _handle(args: argparse.Namespace) -> int:
    return execute(args, sweep=False)


def register(subparsers) -> None:
    parser = add_command(
        subparsers,
        "run",
        _handle,
        help="simulate one configuration (SGD, GD or the ODE) and write a run folder with figures",
        description="Simulate one network from one seed with SGD, full-batch GD or the "
        "gradient-flow ODE; record per-neuron observables (norms P_i, alignment cos δ_i, balance "
        "Q_i, cells) along the way; write them, the final weights, figures and a report to a "
        "run folder.",
        epilog=RUN_EPILOG,
    )
    add_config_options(parser, sweep=False)
    suppress_defaults(parser)

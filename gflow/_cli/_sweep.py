"""``gflow sweep``: seeds × hyper-parameters (σ, η, β) in one compiled program, chunked over
seeds, sharded over devices, streamed to a run folder and resumable after a crash."""

from __future__ import annotations

import argparse

from ._common import UsageError, add_command
from ._run import add_config_options, execute, suppress_defaults

SWEEP_EPILOG = """examples:
  gflow sweep --seeds 0:64 --sigma 1e-5,1e-4 --lr 0.01,0.02 --out runs/sweep
  gflow sweep --seeds 0:64 --sigma 1e-5,1e-4 --lr 0.01,0.02 --out runs/sweep --resume  # crashed
  gflow sweep --trainer flow --seeds 0:16 --sigma 1e-6,1e-5,1e-4 --t-end 300 --chunk-size 8
  gflow sweep --seeds 0:16 --lr 0.005,0.01,0.02 --t-end 300   # every η to flow time 300
  gflow sweep --config sweep.toml --seeds 0:256 --quiet
  XLA_FLAGS=--xla_force_host_platform_device_count=4 gflow sweep --seeds 0:64   # 4 CPU devices
  gflow sweep --coordinator host0:1234 --num-processes 2 --process-id 0 ...   # multi-host, host 0

Every point of the product sigma × lr × momentum runs for every seed; a seed gives the same
initial weights at every point. Runs are computed chunk by chunk (--chunk-size runs at a time,
all in one compiled program, the seed axis split over all devices); each finished chunk is
written to DIR/chunks/ at once, so a killed sweep loses at most the chunk in progress and
--resume continues from there, to the same numbers. A run that diverges (NaN/inf) or whose ODE
solve fails is marked with its reason and left out of the summaries; the others go on.

With a fixed --steps, settings of different η or β end at different flow times t = Kη/(1−β)
(the summary shows each one's and warns); --t-end T gives each point steps = T(1−β)/η, so
that they meet at equal flow time (--save-points N records each). DIR/figures/settings.png
draws the loss-drop time and the final loss against the swept parameter (mean ± std over
seeds); gflow capacity --run DIR --point P --seed S analyses one network of the sweep.

config file (TOML; lists sweep):
  trainer = "sgd"
  seeds = "0:64"
  sigma = [1e-5, 1e-4]
  lr = [0.01, 0.02]
  steps = 3000

One process writes DIR at a time (it holds DIR/gflow.lock); a second sweep into DIR meanwhile
is refused. Every chunk file is checked against its SHA-256 and axes.json when read; --resume
recomputes a corrupt chunk. Several hosts: every process runs the same command with
--coordinator/--num-processes/--process-id (or --distributed under SLURM); process 0 writes
(docs/multihost.md).

Exit status 0 when at least one run finished cleanly, 1 when none did (diverged, failed or dead
networks), 2 for bad input (including --resume of a folder made with a different configuration,
a folder in use, or a full disk), 130 on SIGINT and 143 on SIGTERM (finished chunks are kept).
"""


def _distributed(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize`` for multi-host sweeps (before any computation)."""
    explicit = [k for k in ("coordinator", "num_processes", "process_id") if k in vars(args)]
    if not explicit and not getattr(args, "distributed", False):
        return
    if explicit and len(explicit) != 3:
        raise UsageError(
            "--coordinator, --num-processes and --process-id must be given together "
            "(or use --distributed to detect them under SLURM / Open MPI)."
        )
    import jax

    if explicit:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    else:
        jax.distributed.initialize()


def _handle(args: argparse.Namespace) -> int:
    _distributed(args)
    return execute(args, sweep=True)


def register(subparsers) -> None:
    parser = add_command(
        subparsers,
        "sweep",
        _handle,
        help="many seeds × hyper-parameters, chunked, sharded over devices, resumable",
        description="Run the product of init scales σ, learning rates η and momenta β, each for "
        "many seeds, in one compiled program per configuration; stream each finished chunk of runs "
        "to the output folder; continue an interrupted sweep with --resume.",
        epilog=SWEEP_EPILOG,
    )
    add_config_options(parser, sweep=True)
    multi = parser.add_argument_group("multi-host (jax.distributed)")
    multi.add_argument(
        "--distributed",
        action="store_true",
        help="initialise jax.distributed from SLURM / Open MPI",
    )
    multi.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    multi.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
    multi.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1")
    suppress_defaults(parser)

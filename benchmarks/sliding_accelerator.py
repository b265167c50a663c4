"""The sliding-mode solver on an accelerator, in one run that fits a time budget.

Stages, each written to ``--out/accelerator.json`` as it ends (P_i over time beside it, in
``cifar-h{h}.npz`` and ``cifar-gd.npz``):

1. the demo's flow (embedded MNIST, N = 1000, d = 50, σ = 1e-5, float32): Tsit5 at rtol 1e-4 and
   the sliding solver at h = 0.5 (K = 24), first and second call each;
2. the demo's seed sweep, sliding h = 0.25, vmapped as one compiled program, at ``--seeds``
   (first and second call);
3. the CIFAR task of ``benchmarks/sliding_flow.py`` (float64, N = 800, d = 300, σ = 1e-5,
   t ∈ [0, 743], 61 save times, K = 32) at each of ``--cifar-steps``, as long as the
   previous run's time says the next one ends before ``--deadline`` seconds; P_i over time are
   compared with the arrays of ``--reference-dir`` (the CPU runs of ``sliding_flow.py``) at the
   same step and at the others.

The CIFAR task travels as the arrays gflow builds from ``cifar:PATH`` (``--export-task``: no
CIFAR source is needed where the stages run):

    python benchmarks/sliding_accelerator.py --export-task task.npz --dataset cifar:PATH
    python benchmarks/sliding_accelerator.py --task task.npz --out DIR [--deadline 540]

``--compare`` reads the CIFAR arrays of ``benchmarks/results`` (``sliding-cifar-h{h}.npz`` of
every step, ``sliding-cifar-gd-h200.npz``) and writes ``results/sliding-cifar-convergence.json``:
per run, quantiles over neurons of ``|ΔP_i(t_end)| / max_t P_i`` against the finest sliding run
and between successive steps, and the final P_i of the neurons whose runs disagree most.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from sliding_demo import demo_problem  # noqa: E402
from sliding_flow import (  # noqa: E402
    CIFAR_SAMPLES,
    CIFAR_SAVES,
    CIFAR_T_END,
    cifar_start,
    gd_grid,
    run_arrays,
    sliding_config,
)

import gflow  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def export_task(spec: str, path: Path) -> None:
    """Write the CIFAR task's training arrays (float64) as ``sliding_flow.py`` builds them."""
    ds = gflow.load_dataset(spec, n_per_class=CIFAR_SAMPLES // 2)
    np.savez(
        path,
        x=np.asarray(ds.x, np.float64),
        y=np.asarray(ds.y, np.int32),
        signed_labels=np.asarray(ds.signed_labels, np.float64),
        name=np.asarray(ds.name),
    )


def load_task(path: Path) -> gflow.TrainingData:
    with np.load(path) as f:
        x = jnp.asarray(f["x"], jnp.float64)
        return gflow.TrainingData(
            x=x,
            y=jnp.asarray(f["y"], jnp.int32),
            signed_labels=jnp.asarray(f["signed_labels"], jnp.float64),
            x_test=jnp.zeros((0, x.shape[1]), jnp.float64),
            y_test=jnp.zeros((0,), jnp.int32),
        )


def _quantiles(e: np.ndarray) -> dict[str, float]:
    return {f"q{q:g}": float(np.quantile(e, q / 100)) for q in (50, 90, 99, 100)}


def compare(results: Path, gd_file: str = "sliding-cifar-gd-h200.npz") -> dict:
    """Convergence of the CIFAR runs' P_i at t_end over neurons (see the module's docstring)."""
    runs: dict[str, np.ndarray] = {}
    steps = sorted(
        (float(f.stem.removeprefix("sliding-cifar-h")), f)
        for f in results.glob("sliding-cifar-h*.npz")
    )
    for h, f in reversed(steps):
        with np.load(f) as a:
            runs[f"sliding h={h:g}"] = a["P"]
    with np.load(results / gd_file) as a:
        for k in sorted(a.files, key=lambda k: -float(k.removeprefix("P_eta")) if k != "t" else 0):
            if k != "t":
                runs[f"gd eta={k.removeprefix('P_eta')}"] = a[k]
    names = list(runs)
    finest = f"sliding h={steps[0][0]:g}"
    scale = np.max(np.abs(runs[finest]), axis=0)

    def gap(a: str, b: str) -> np.ndarray:
        return np.abs(runs[a][-1] - runs[b][-1]) / scale

    sliding = [n for n in names if n.startswith("sliding")]
    fine = [n for n in sliding if float(n.removeprefix("sliding h=")) <= 0.0625]
    spread = np.max([gap(a, b) for a in fine for b in fine], axis=0)
    return {
        "finest": finest,
        "against_finest": {n: _quantiles(gap(n, finest)) for n in names if n != finest},
        "successive_steps": {
            f"{a} vs {b}": _quantiles(gap(a, b)) for a, b in zip(sliding, sliding[1:])
        },
        "neurons_most_apart": {
            str(int(i)): {n: float(runs[n][-1, i] / scale[i]) for n in names}
            for i in np.argsort(spread)[::-1][:3]
        },
    }


def timed(fn):
    """``(fn() once it is ready, its wall time in seconds)``."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-task", type=Path, default=None)
    parser.add_argument("--compare", action="store_true", help="summarise the results' arrays")
    parser.add_argument("--dataset", default=None, help="cifar:PATH, with --export-task")
    parser.add_argument("--task", type=Path, default=None, help="arrays of --export-task")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--deadline", type=float, default=540.0, help="seconds for all stages")
    parser.add_argument("--seeds", default="32,256")
    parser.add_argument("--cifar-steps", default="0.0625,0.03125")
    parser.add_argument("--cifar-t-end", type=float, default=CIFAR_T_END)
    parser.add_argument("--demo-t-end", type=float, default=None, help="default: the demo's")
    parser.add_argument("--gd-etas", default="0.025,0.0125,0.00625,0.003125")
    parser.add_argument("--reference-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.export_task is not None:
        export_task(args.dataset, args.export_task)
        return
    if args.compare:
        summary = compare(RESULTS)
        (RESULTS / "sliding-cifar-convergence.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary, indent=1))
        return
    start = time.perf_counter()

    def left() -> float:
        return args.deadline - (time.perf_counter() - start)

    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "accelerator.json"
    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "host": platform.processor() or platform.machine(),
    }

    def write(stage: str, value) -> None:
        result[stage] = value
        result["elapsed"] = time.perf_counter() - start
        report_path.write_text(json.dumps(result, indent=1))
        print(stage, json.dumps(value)[:600], f"[{result['elapsed']:.0f} s]", flush=True)

    # 1. The demo's flow.
    cfg, ds, data, p0, ts = demo_problem(args.demo_t_end)
    demo = {}
    for name, config in (
        ("tsit5 rtol=1e-4", gflow.FlowConfig(rtol=1e-4, max_steps=200_000)),
        ("sliding h=0.5", sliding_config(0.5, 24)),
    ):

        def call(config=config):
            return gflow.gradient_flow(p0, data, ts, config=config, return_stats=True, throw=False)

        _, first = timed(call)
        (traj, stats), second = timed(call)
        demo[name] = {
            "seconds_first_call": first,
            "seconds_second_call": second,
            "steps": int(stats.num_steps),
            "evaluations": int(stats.evaluations),
            "status": gflow.status_message(traj.status),
            "balance_drift": float(gflow.balance_drift(traj.observables).max()),
            "final_loss": float(traj.observables.loss[-1]),
        }
        write("demo", demo)

    # 2. The seed sweep as one compiled program (the first size now, the others last).
    sweeps: dict = {}
    sweep = jax.jit(
        jax.vmap(
            lambda p: gflow.gradient_flow(p, data, ts, config=sliding_config(0.25, 24), throw=False)
        )
    )

    def run_sweep(seeds: int) -> None:
        done = [s for s in sweeps.values() if isinstance(s, dict)]
        if done:  # compile time once, run time in proportion to the seeds (an upper bound)
            one = done[0]
            compile_s = one["seconds_first_call"] - one["seconds_second_call"]
            predicted = compile_s + one["seconds_second_call"] * seeds / one["seeds"]
            if left() < 1.2 * predicted:
                sweeps[str(seeds)] = f"skipped: {predicted:.0f} s predicted, {left():.0f} s left"
                write("sweep", sweeps)
                return
        keys = jax.random.split(jax.random.key(7), seeds)
        p_seeds = jax.vmap(lambda k: gflow.init_params(k, cfg.width, ds.dim, cfg.sigma))(keys)
        traj, first = timed(lambda: sweep(p_seeds))
        second = first
        if not done or left() > 2 * first:
            traj, second = timed(lambda: sweep(p_seeds))
        status = np.asarray(traj.status)
        sweeps[str(seeds)] = {
            "seeds": seeds,
            "h": 0.25,
            "seconds_first_call": first,
            "seconds_second_call": second,
            "seconds_per_seed": second / seeds,
            "seeds_ok": int(np.sum(status == 0)),
            "balance_drift_max": float(gflow.balance_drift(traj.observables).max()),
        }
        write("sweep", sweeps)

    seed_counts = [int(s) for s in args.seeds.split(",") if s]
    if seed_counts:
        run_sweep(seed_counts[0])

    # 3. The CIFAR task through the whole flow: GD at decreasing η, then the sliding solver.
    if args.task is None:
        for seeds in seed_counts[1:]:
            run_sweep(seeds)
        return
    cifar_data = load_task(args.task)
    params0 = cifar_start(cifar_data.x.shape[1])
    cts = np.linspace(0.0, args.cifar_t_end, CIFAR_SAVES)
    gd_runs: dict = {}
    gd_P: dict[float, np.ndarray] = {}
    gd_per_step = None
    for eta_asked in (float(s) for s in args.gd_etas.split(",") if s):
        per, steps, eta = gd_grid(cts, eta_asked)
        if gd_per_step is not None and left() < 1.5 * gd_per_step * steps + 60:
            gd_runs[f"{eta:.6g}"] = f"skipped: {left():.0f} s left"
            write("cifar_gd", gd_runs)
            continue
        gd, seconds = timed(
            lambda eta=eta, steps=steps, per=per: gflow.train_gd(
                params0,
                cifar_data,
                learning_rate=eta,
                config=gflow.SGDConfig(steps=steps, record_every=per),
            )
        )
        gd_per_step = seconds / steps if gd_per_step is None else gd_per_step
        gd_P[eta] = np.asarray(gd.observables.P)
        np.savez_compressed(
            args.out / "cifar-gd.npz", t=cts, **{f"P_eta{e:.6g}": a for e, a in gd_P.items()}
        )
        gd_runs[f"{eta:.6g}"] = {
            "eta": eta,
            "steps": steps,
            "seconds": seconds,
            "loss_end": float(gd.observables.loss[-1]),
            "balance_drift": float(gflow.balance_drift(gd.observables).max()),
        }
        write("cifar_gd", gd_runs)
    runs: dict = {}
    P: dict[float, np.ndarray] = {}
    per_step = None
    for h in (float(s) for s in args.cifar_steps.split(",") if s):
        steps_needed = int(np.ceil(args.cifar_t_end / h))
        if per_step is not None and left() < per_step * steps_needed:
            runs[str(h)] = f"skipped: {per_step * steps_needed:.0f} s predicted, {left():.0f} left"
            write("cifar", runs)
            continue
        (traj, stats), seconds = timed(
            lambda h=h: gflow.gradient_flow(
                params0,
                cifar_data,
                cts,
                config=sliding_config(h, 32),
                return_stats=True,
                throw=False,
            )
        )
        obs = traj.observables
        arrays = run_arrays(traj, cts)
        P[h] = arrays["P"]
        per_step = seconds / int(stats.num_steps) if per_step is None else per_step
        np.savez_compressed(args.out / f"cifar-h{h:g}.npz", **arrays)
        run = {
            "seconds_incl_compile_if_first": seconds,
            "status": gflow.status_message(traj.status),
            "num_steps": int(stats.num_steps),
            "evaluations": int(stats.evaluations),
            "balance_drift": float(gflow.balance_drift(obs).max()),
            "loss_end": float(arrays["loss"][-1]),
            "overflow": bool(np.any(np.asarray(traj.sliding.overflow))),
            "sliding_pairs_max": int(arrays["sliding"].max()),
        }
        others = {f"h={g:g}": P[g] for g in P if g != h}
        others.update({f"gd eta={eta:.6g}": gP for eta, gP in gd_P.items()})
        for ref in sorted(args.reference_dir.glob("sliding-cifar-h*.npz")):
            with np.load(ref) as f:
                if f["P"].shape == P[h].shape and np.allclose(f["t"], cts):
                    others[f"cpu {ref.stem.removeprefix('sliding-cifar-')}"] = f["P"]
        scale = np.max(np.abs(P[h]), axis=0)
        run["P_difference_per_time"] = {
            name: (np.abs(other - P[h]) / scale).max(axis=1).tolist()
            for name, other in others.items()
        }
        runs[str(h)] = run
        write("cifar", runs)
        if len(P) == 1:  # the larger sweeps after the first sliding run, before finer steps
            for seeds in seed_counts[1:]:
                run_sweep(seeds)


if __name__ == "__main__":
    main()

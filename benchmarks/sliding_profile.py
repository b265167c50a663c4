"""Where a step of the sliding-mode solver spends its time, on the CPU or an accelerator.

Times the CIFAR task of ``benchmarks/sliding_flow.py`` (float64, N = 800, d = 300, K = 32) over
``[0, --t-end]`` at h = ``--step`` (first call with compilation, second without) and the demo's
flow at h = 0.5 (K = 24, second call), then traces ``--trace-steps`` CIFAR steps with
`jax.profiler` and summarises the trace: the span, the time the device (or the CPU's thunks,
summed over its threads) was busy, the busiest kernels, and the device-to-host copies per step
(each one a wait of the host for a loop's condition on a GPU). Writes
``--out/sliding-profile.json`` (name it with ``--name``).

    python benchmarks/sliding_profile.py --task task.npz --out DIR [--t-end 186] [--step 0.0625]

``task.npz`` is the CIFAR task as ``benchmarks/sliding_accelerator.py --export-task`` writes it.
XLA's options are read from the environment, so one option is compared by running the script
twice, e.g. with ``XLA_FLAGS=--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,
CUDNN,CONDITIONAL,WHILE`` for XLA's command buffers around loops on a GPU.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from sliding_accelerator import load_task, timed  # noqa: E402
from sliding_demo import demo_problem  # noqa: E402
from sliding_flow import cifar_start, sliding_config  # noqa: E402

import gflow  # noqa: E402


def summarise_trace(path: Path, steps: int) -> dict:
    """Busy time, busiest kernels and device-to-host copies of a perfetto trace of ``steps``
    solver steps. On a GPU the kernels are the events of the device's streams; on the CPU, the
    thunks XLA runs (their self time: nested loops' bodies are not counted twice)."""
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    processes = {
        e["pid"]: e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    spans = [e for e in events if e.get("ph") == "X"]
    device = [e for e in spans if "GPU" in processes.get(e["pid"], "")]
    if not device:  # the CPU: XLA's thunks, without the Python frames and the executor's waits
        device = [
            e
            for e in spans
            if not e["name"].startswith("$")
            and "ThunkExecutor" not in e["name"]
            and "Await" not in e["name"]
        ]
    busy = collections.Counter()  # self time: an event less the events nested in it
    threads = collections.defaultdict(list)
    for e in device:
        threads[e["pid"], e["tid"]].append(e)
    for thread in threads.values():
        thread.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        stack: list[dict] = []
        for e in thread:
            while stack and stack[-1]["ts"] + stack[-1].get("dur", 0) <= e["ts"]:
                stack.pop()
            if stack:
                busy[re.sub(r"[._]\d+$", "", stack[-1]["name"])] -= e.get("dur", 0)
            busy[re.sub(r"[._]\d+$", "", e["name"])] += e.get("dur", 0)
            stack.append(e)
    start = min(e["ts"] for e in device)
    end = max(e["ts"] + e.get("dur", 0) for e in device)
    copies = sum(1 for e in device if e["name"].startswith("MemcpyD2H"))
    return {
        "steps": steps,
        "span_ms": (end - start) / 1e3,
        "busy_ms": sum(busy.values()) / 1e3,
        "device_to_host_copies_per_step": copies / steps,
        "busiest_ms": {k: v / 1e3 for k, v in busy.most_common(12)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", type=Path, required=True, help="arrays of --export-task")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", default="sliding-profile")
    parser.add_argument("--t-end", type=float, default=186.0)
    parser.add_argument("--step", type=float, default=0.0625)
    parser.add_argument("--trace-steps", type=int, default=80)
    parser.add_argument("--demo-t-end", type=float, default=None, help="default: the demo's")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }

    def write() -> None:
        (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result), flush=True)

    data = load_task(args.task)
    p0 = cifar_start(data.x.shape[1])
    config = sliding_config(args.step, 32)
    ts = np.linspace(0.0, args.t_end, 16)

    def cifar():
        return gflow.gradient_flow(p0, data, ts, config=config, return_stats=True)

    first = timed(cifar)[1]
    (traj, stats), second = timed(cifar)
    result["cifar"] = {
        "h": args.step,
        "t_end": args.t_end,
        "steps": int(stats.num_steps),
        "seconds_first_call": first,
        "seconds_second_call": second,
        "ms_per_step": 1e3 * second / int(stats.num_steps),
        "loss_end": float(traj.observables.loss[-1]),
        "status": gflow.status_message(traj.status),
    }
    write()

    demo = demo_problem(args.demo_t_end)
    demo_config = sliding_config(0.5, 24)

    def demo_flow():
        return gflow.gradient_flow(demo.params0, demo.data, demo.ts, config=demo_config)

    timed(demo_flow)
    seconds = timed(demo_flow)[1]
    result["demo"] = {"h": 0.5, "t_end": float(demo.ts[-1]), "seconds_second_call": seconds}
    write()

    if args.trace_steps > 0:
        trace_ts = np.array([0.0, args.trace_steps * args.step])

        def traced():
            return gflow.gradient_flow(p0, data, trace_ts, config=config)

        jax.block_until_ready(traced())  # compiled before the trace
        folder = Path(tempfile.mkdtemp(prefix="gflow-trace-"))
        try:
            with jax.profiler.trace(str(folder), create_perfetto_trace=True):
                jax.block_until_ready(traced())
            path = next(folder.rglob("*.trace.json.gz"))
            result["trace"] = summarise_trace(path, args.trace_steps)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        write()


if __name__ == "__main__":
    main()

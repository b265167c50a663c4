"""The timing harness behind ``gflow bench`` and ``benchmarks/``: seed sweeps, the ODE, stable
cells and sweep memory, timed against the loops researchers write today.

Every number is a same-run ratio: the references (a plain NumPy loop over seeds and steps, and
the PyTorch loop — ``nn.Module``, ``torch.optim.SGD``, Python loops — when torch is importable)
run in the same process, interleaved repeat by repeat with gflow's runs, on the same thread
count; each time is the median of the repeats; compile time is measured apart from run time.
The machine's limit is a float32 matmul measured in the same run, and every sweep result states
its fraction of it for the standard algorithm's FLOP count (``4·d·D·(B+1)`` per seed-step:
forward ``2BDd``, weight gradient ``2BDd``, momentum and update ``4dD``, small layers ignored).

Sections (`SECTIONS`): ``sweep`` (the paper's workload: d = 300, D = 1024, N = 800, B = 4,
β = 0.9, norms every 50 steps, S ∈ {1, 8, 32, 128}), ``ode`` (diffrax flow through the loss
drop, float32 and float64, against SGD over the same flow time, and the float64 solve against
full-batch GD at equal trajectory error: the analysis of `gflow._discretisation`), ``cells``
(Algorithm 1 with M = 100 000 probes, N = 4000) and ``memory`` (peak RSS of a 1024-seed sweep
with the norms streamed to disk, measured in a subprocess). `QUICK` holds small sizes.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._discretisation import (
    gate_chatter,
    gate_margins,
    norms_balance_drift,
    perturbed_start,
    power_law_eta,
    relative_gaps,
    resolved_window,
    richardson_reference,
    trajectory_errors,
)

SECTIONS = ("sweep", "ode", "cells", "memory")
SWEEP_MODES = ("shared", "shared-weights", "per-seed", "plain-vmap")


def _ode_config(settings: BenchSettings, dtype):
    """The solve's `FlowConfig`: constant steps ``ode_dt`` for the implicit Gauss solvers and,
    with the balance projection, for Euler/Heun/Midpoint/Ralston; else PID steps at ``ode_rtol``
    (float32) / ``ode64_rtol`` (float64)."""
    import jax.numpy as jnp

    from gflow import FlowConfig
    from gflow._flow import PROJECTABLE_SOLVERS

    try:
        if settings.ode_solver == "sliding":
            return FlowConfig(
                solver="sliding",
                adaptive=False,
                dt0=settings.ode_dt,
                max_steps=settings.ode_max_steps,
                sliding_capacity=32,
            )
        if settings.ode_solver.startswith("gauss"):
            return FlowConfig(
                solver=settings.ode_solver,
                adaptive=False,
                dt0=settings.ode_dt,
                max_steps=settings.ode_max_steps,
                stage_max_iterations=settings.ode_stage_iterations,
            )
        if settings.ode_solver in PROJECTABLE_SOLVERS:
            return FlowConfig(
                solver=settings.ode_solver,
                adaptive=False,
                dt0=settings.ode_dt,
                max_steps=settings.ode_max_steps,
                project_balance=True,
            )
        rtol = settings.ode64_rtol if jnp.dtype(dtype) == jnp.float64 else settings.ode_rtol
        return FlowConfig(solver=settings.ode_solver, rtol=rtol, max_steps=settings.ode_max_steps)
    except ValueError as err:
        raise ValueError(f"ode_solver: {err}") from None


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """Sizes of every section (defaults: the paper's workload; `QUICK` for ``--quick``).

    Sweep: ``seeds`` values of S, ``steps`` SGD steps per run, ``repeats`` timed repeats per
    contender (median reported), network width d = ``width``, N = ``samples``, D = ``dim``
    (synthetic inputs of that shape unless a dataset is given: the time does not depend on the
    pixel values), batch B, momentum β, η, norms every ``record_every`` steps, ``chunk`` steps per
    chunk. ``plain_max_seeds``: the largest S at which gflow's per-step ``train_sgd`` (vmapped)
    is also timed. ODE: ``ode_width``/``ode_samples`` (float32), ``ode64_width``/``ode64_samples``
    (float64), ``ode_solver`` with constant steps ``ode_dt`` (``sliding``, the sliding-mode
    integrator with capacity 32; ``heun``, ``euler``, ``midpoint``,
    ``ralston`` with the balance projection; ``gauss1``/``gauss2``, implicit, exact balance, at
    most ``ode_stage_iterations`` stage sweeps per step), or an adaptive explicit solver with
    tolerances ``ode_rtol``/``ode64_rtol``; at most ``ode_max_steps`` steps; the float64 solve is
    compared with full-batch GD at ``ode_gd_lr``, half and (``ode_gd_levels = 3``) a quarter of
    it, and GD at ``ode_gd_lr`` is rerun from the start perturbed by each relative size in
    ``ode_perturbations``; ``ode_dtypes`` says which of the two solves run. Cells:
    ``cells_probes`` M, ``cells_samples`` N. Memory: ``memory_seeds`` in groups of
    ``memory_group``, ``memory_steps`` steps.
    """

    seeds: tuple[int, ...] = (1, 8, 32, 128)
    steps: int = 1000
    repeats: int = 5
    width: int = 300
    samples: int = 800
    dim: int = 1024
    batch_size: int = 4
    momentum: float = 0.9
    learning_rate: float = 0.01
    record_every: int = 50
    chunk: int = 50
    sigma: float = 1e-5
    plain_max_seeds: int = 8
    matmul_size: int = 2048
    ode_width: int = 300
    ode_samples: int = 800
    ode_rtol: float = 1e-4
    ode64_width: int = 300
    ode64_samples: int = 800
    ode64_rtol: float = 1e-4
    ode_max_steps: int = 20_000
    ode_stage_iterations: int = 200
    ode_dtypes: tuple[str, ...] = ("float32", "float64")
    ode_solver: str = "gauss1"
    ode_dt: float = 0.25
    ode_gd_lr: float = 0.05
    ode_gd_levels: int = 3
    ode_perturbations: tuple[float, ...] = (1e-12, 1e-8)
    cells_probes: int = 100_000
    cells_samples: int = 4000
    memory_seeds: int = 1024
    memory_group: int = 128
    memory_steps: int = 1000

    def __post_init__(self):
        for name in (
            "steps",
            "repeats",
            "width",
            "samples",
            "dim",
            "batch_size",
            "record_every",
            "chunk",
            "matmul_size",
            "ode_width",
            "ode_samples",
            "ode64_width",
            "ode64_samples",
            "ode_max_steps",
            "ode_stage_iterations",
            "cells_probes",
            "cells_samples",
            "memory_seeds",
            "memory_group",
            "memory_steps",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if not self.seeds or any((not isinstance(s, int)) or s < 1 for s in self.seeds):
            raise ValueError(f"seeds must be positive integers; got {self.seeds!r}")
        if self.record_every % self.chunk:
            raise ValueError(f"chunk ({self.chunk}) must divide record_every ({self.record_every})")
        for name in ("steps", "memory_steps"):
            if getattr(self, name) % self.record_every:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) must be a multiple of record_every "
                    f"({self.record_every})"
                )
        if self.batch_size > self.samples:
            raise ValueError(
                f"batch_size ({self.batch_size}) must not exceed samples ({self.samples})"
            )
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1); got {self.momentum}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0; got {self.learning_rate}")
        if not self.ode_dtypes or any(d not in ("float32", "float64") for d in self.ode_dtypes):
            raise ValueError(f"ode dtypes must be float32 and/or float64; got {self.ode_dtypes!r}")
        if self.ode_gd_levels not in (2, 3):
            raise ValueError(f"ode_gd_levels must be 2 or 3; got {self.ode_gd_levels!r}")
        if any(
            isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 < e < 1
            for e in self.ode_perturbations
        ):
            raise ValueError(
                "ode perturbations must be relative sizes in (0, 1); got "
                f"{self.ode_perturbations!r}"
            )
        for name in ("ode_dt", "ode_gd_lr", "ode_rtol", "ode64_rtol"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)!r}")
        for dtype in self.ode_dtypes:  # the solver's own checks (name, steps), before any run
            _ode_config(self, dtype)


QUICK = BenchSettings(
    seeds=(1, 8),
    steps=100,
    repeats=3,
    matmul_size=1024,
    plain_max_seeds=0,
    ode_width=16,
    ode_samples=100,
    ode_rtol=1e-3,
    ode64_width=16,
    ode64_samples=100,
    ode64_rtol=1e-3,
    ode_dt=0.5,
    ode_gd_lr=0.1,
    ode_max_steps=4000,
    cells_probes=4000,
    cells_samples=400,
    memory_seeds=64,
    memory_group=32,
    memory_steps=50,
)


# --------------------------------------------------------------------------- timing


def _block(tree):
    import jax

    return jax.block_until_ready(tree)


def _seconds(fn) -> float:
    start = time.perf_counter()
    _block(fn())
    return time.perf_counter() - start


def thread_counts() -> dict:
    """Threads each library uses here: all see the same cores (module docstring, README)."""
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    counts = {"cores": cores, "numpy_blas": _blas_threads(cores), "xla": _xla_threads(cores)}
    torch = _torch()
    if torch is not None:
        counts["torch"] = torch.get_num_threads()
    return counts


def _blas_threads(cores: int) -> int:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return cores


def _xla_threads(cores: int) -> int:
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_cpu_multi_thread_eigen=false" in flags:
        return 1
    return cores


def _cache_size(fn: Any) -> int:
    """Compiled entries of a ``jax.jit`` function (a new one per retrace)."""
    return fn._cache_size()  # private jax counter, the only record of retraces


def _torch():
    """The ``torch`` module when importable, else None (gflow never depends on it)."""
    if importlib.util.find_spec("torch") is None:
        return None
    return importlib.import_module("torch")


def matmul_limit(size: int, repeats: int) -> dict:
    """Measured float32 GEMM rate ``[size, size] × [size, size]`` (NumPy BLAS and XLA), GFLOP/s.

    The limit is the best rate seen: the machine can do at least that much.
    """
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flops = 2.0 * size**3
    aj, bj = jnp.asarray(a), jnp.asarray(b)
    gemm = jax.jit(jnp.matmul)
    _block(gemm(aj, bj))
    _ = a @ b  # warm the BLAS pool
    numpy_t, xla_t = [], []
    for _ in range(max(repeats, 3)):
        numpy_t.append(_seconds(lambda: a @ b))
        xla_t.append(_seconds(lambda: gemm(aj, bj)))
    rates = {"numpy_gflops": flops / min(numpy_t) / 1e9, "xla_gflops": flops / min(xla_t) / 1e9}
    return {"size": size, **rates, "limit_gflops": max(rates.values())}


def workload_flops(width: int, dim: int, batch_size: int, seeds: int, steps: int) -> float:
    """FLOPs of the standard algorithm: ``4·d·D·(B+1)`` per seed-step (module docstring)."""
    return 4.0 * width * dim * (batch_size + 1) * seeds * steps


def kernel_flops(
    basis: str, width: int, samples: int, dim: int, batch_size: int, seeds: int, steps: int
) -> float:
    """GEMM FLOPs gflow's chunked kernel itself does (see `gflow._chunked.resolve_basis`):
    ``8·B·D`` per neuron-step in the weight basis; ``4·B·N`` per neuron-step plus ``4·N·D`` per
    neuron per run (``X W(0)ᵀ`` and the final ``W``) in the sample basis."""
    if basis == "samples":
        return 4.0 * width * seeds * (batch_size * samples * steps + samples * dim)
    return 8.0 * width * dim * batch_size * seeds * steps


# --------------------------------------------------------------------------- references


def numpy_batch_orders(
    seeds: int, steps: int, n: int, batch_size: int, seed: int = 0
) -> np.ndarray:
    """Per-seed mini-batch indices ``[S, steps, B]``: a fresh permutation per epoch (as gflow)."""
    per_epoch = n // batch_size
    epochs = -(-steps // per_epoch)
    orders = np.empty((seeds, epochs * per_epoch, batch_size), np.int64)
    for s in range(seeds):
        rng = np.random.default_rng([seed, s])
        for e in range(epochs):
            perm = rng.permutation(n)[: per_epoch * batch_size]
            orders[s, e * per_epoch : (e + 1) * per_epoch] = perm.reshape(per_epoch, batch_size)
    return orders[:, :steps]


def numpy_sgd_sweep(W0, b0, V0, x, y, orders, *, learning_rate, momentum, record_every):
    """The NumPy reference: a Python loop over seeds and steps, momentum SGD as torch/optax.

    ``m ← g + β m``, ``θ ← θ − η m`` on the batch-mean cross-entropy of the network of
    docs/theory.md §1.
    Returns per-neuron ``(‖w_i‖, ‖v_i‖, b_i)`` every ``record_every`` steps, each ``[S, T, d]``.
    """
    seeds, steps, batch = orders.shape
    n_rec = steps // record_every + 1
    w_norm = np.empty((seeds, n_rec, W0.shape[1]), W0.dtype)
    v_norm, bias = np.empty_like(w_norm), np.empty_like(w_norm)
    lr, beta = W0.dtype.type(learning_rate), W0.dtype.type(momentum)
    rows = np.arange(batch)
    for s in range(seeds):
        W, b, V = W0[s].copy(), b0[s].copy(), V0[s].copy()
        mW, mb, mV = np.zeros_like(W), np.zeros_like(b), np.zeros_like(V)
        for k in range(steps + 1):
            if k % record_every == 0:
                j = k // record_every
                w_norm[s, j] = np.linalg.norm(W, axis=1)
                v_norm[s, j] = np.linalg.norm(V, axis=1)
                bias[s, j] = b
            if k == steps:
                break
            idx = orders[s, k]
            xb, yb = x[idx], y[idx]
            z = xb @ W.T + b
            h = np.maximum(z, 0)
            o = h @ V
            o -= o.max(axis=1, keepdims=True)
            p = np.exp(o)
            p /= p.sum(axis=1, keepdims=True)
            p[rows, yb] -= 1
            r = p / batch
            gz = (r @ V.T) * (z > 0)
            gV = h.T @ r
            gW = gz.T @ xb
            gb = gz.sum(axis=0)
            mW *= beta
            mW += gW
            W -= lr * mW
            mb *= beta
            mb += gb
            b -= lr * mb
            mV *= beta
            mV += gV
            V -= lr * mV
    return w_norm, v_norm, bias


def torch_sgd_sweep(W0, b0, V0, x, y, orders, *, learning_rate, momentum, record_every):
    """The PyTorch reference a researcher writes: ``nn.Module``, ``torch.optim.SGD``, loops.

    Same network (``nn.Linear(D, d)``, ReLU, ``nn.Linear(d, 2, bias=False)``), loss
    (``F.cross_entropy``, batch mean) and momentum convention (dampening 0) as gflow. Batches
    come from the precomputed ``orders`` (cheaper than a DataLoader: generous to torch).
    Returns ``(‖w_i‖, ‖v_i‖, b_i)`` every ``record_every`` steps, each ``[S, T, d]``.
    """
    torch = _torch()
    if torch is None:
        raise RuntimeError("the PyTorch reference needs torch, which is not importable")
    nn, F = torch.nn, torch.nn.functional
    dtype = torch.float64 if W0.dtype == np.float64 else torch.float32
    seeds, steps, _ = orders.shape
    width, dim = W0.shape[1], W0.shape[2]

    class TwoLayerReLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(dim, width)
            self.out = nn.Linear(width, 2, bias=False)

        def forward(self, inputs):
            return self.out(torch.relu(self.hidden(inputs)))

    xt = torch.from_numpy(np.ascontiguousarray(x)).to(dtype)
    yt = torch.from_numpy(np.asarray(y, np.int64))
    order_t = torch.from_numpy(orders)
    n_rec = steps // record_every + 1
    w_norm = np.empty((seeds, n_rec, width), W0.dtype)
    v_norm, bias = np.empty_like(w_norm), np.empty_like(w_norm)
    for s in range(seeds):
        model = TwoLayerReLU().to(dtype)
        with torch.no_grad():
            model.hidden.weight.copy_(torch.from_numpy(np.array(W0[s])))
            model.hidden.bias.copy_(torch.from_numpy(np.array(b0[s])))
            model.out.weight.copy_(torch.from_numpy(np.array(V0[s].T)))
        opt = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
        for k in range(steps + 1):
            if k % record_every == 0:
                j = k // record_every
                with torch.no_grad():
                    w_norm[s, j] = model.hidden.weight.norm(dim=1).numpy()
                    v_norm[s, j] = model.out.weight.norm(dim=0).numpy()
                    bias[s, j] = model.hidden.bias.numpy()
            if k == steps:
                break
            idx = order_t[s, k]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return w_norm, v_norm, bias


# --------------------------------------------------------------------------- sweep


def _sweep_data(settings: BenchSettings, dataset: str | None):
    from gflow import load_dataset

    if dataset:
        return load_dataset(dataset, n_per_class=settings.samples // 2)
    return load_dataset(
        "clusters", n_samples=settings.samples, dim=settings.dim, seed=0, test_samples=0
    )


def _stacked_init(seeds: int, width: int, dim: int, sigma: float, dtype):
    import jax

    from gflow import init_params

    keys = jax.random.split(jax.random.key(2024), seeds)
    return jax.vmap(lambda k: init_params(k, width, dim, sigma, dtype=dtype))(keys)


def _gflow_contenders(params0, data, settings: BenchSettings, seeds: int):
    """``mode -> (run(value_index), jitted function whose cache must not grow)``."""
    import jax

    from gflow import SGDConfig, _chunked, train_sgd

    config = SGDConfig(
        steps=settings.steps, record_every=settings.record_every, batch_size=settings.batch_size
    )
    key = jax.random.key(7)
    keys = jax.random.split(key, seeds)
    beta = settings.momentum

    def lr(i):  # a new value at every call: a retrace would show in the cache size
        return settings.learning_rate * (1.0 + 1e-6 * i)

    common: dict[str, Any] = dict(config=config, chunk=settings.chunk, observables="norms")
    contenders = {  # basis "auto": the sample basis at the paper's N = 800 < 2D
        "shared": (
            lambda i: _chunked.train_sgd_seeds_shared_order(
                params0, key, data, learning_rate=lr(i), momentum=beta, **common
            ),
            _chunked._train_stacked,
        ),
        "shared-weights": (
            lambda i: _chunked.train_sgd_seeds_shared_order(
                params0, key, data, learning_rate=lr(i), momentum=beta, basis="weights", **common
            ),
            _chunked._train_stacked,
        ),
        "per-seed": (
            lambda i: _chunked.train_sgd_chunked_seeds(
                params0, keys, data, learning_rate=lr(i), momentum=beta, **common
            ),
            _chunked._train_per_seed,
        ),
    }
    if seeds <= settings.plain_max_seeds:
        plain = jax.jit(
            jax.vmap(
                lambda p, k, eta: train_sgd(
                    p, k, data, learning_rate=eta, momentum=beta, config=config, throw=False
                ),
                in_axes=(0, 0, None),
            )
        )
        contenders["plain-vmap"] = (lambda i: plain(params0, keys, lr(i)), plain)
    return contenders


def _mode_basis(mode: str, n: int, dim: int, settings: BenchSettings) -> str | None:
    """How a sweep mode carries W (``None`` for the per-step trainer)."""
    from gflow._chunked import resolve_basis

    if mode == "plain-vmap":
        return None
    return resolve_basis(
        "weights" if mode == "shared-weights" else "auto",
        n,
        dim,
        settings.batch_size,
        settings.steps,
    )


def bench_sweep(
    settings: BenchSettings, *, dataset: str | None, limit_gflops: float, use_torch: bool, log=print
) -> list[dict]:
    """Time gflow's sweep modes against the NumPy (and PyTorch) loops for every S."""
    import jax.numpy as jnp

    from gflow import training_data

    ds = _sweep_data(settings, dataset)
    data = training_data(ds, jnp.float32)
    x, y = np.asarray(ds.x, np.float32), np.asarray(ds.y, np.int64)
    n, dim = x.shape
    torch_mod = _torch() if use_torch else None
    results = []
    for seeds in settings.seeds:
        params0 = _stacked_init(seeds, settings.width, dim, settings.sigma, jnp.float32)
        W0, b0, V0 = (np.asarray(p) for p in params0)
        orders = numpy_batch_orders(seeds, settings.steps, n, settings.batch_size)
        ref_kw = dict(
            learning_rate=settings.learning_rate,
            momentum=settings.momentum,
            record_every=settings.record_every,
        )
        references = {"numpy": lambda: numpy_sgd_sweep(W0, b0, V0, x, y, orders, **ref_kw)}
        if torch_mod is not None:
            references["torch"] = lambda: torch_sgd_sweep(W0, b0, V0, x, y, orders, **ref_kw)
        contenders = _gflow_contenders(params0, data, settings, seeds)
        first, compiled = {}, {}
        for mode, (run, jitted) in contenders.items():
            before = _cache_size(jitted)
            first[mode] = _seconds(lambda: run(0))
            compiled[mode] = _cache_size(jitted) - before  # 1: a new configuration, compiled once
        warm = {mode: _cache_size(jitted) for mode, (_, jitted) in contenders.items()}
        times = {name: [] for name in list(contenders) + list(references)}
        for r in range(settings.repeats):  # interleaved: load changes hit every contender alike
            for mode, (run, _) in contenders.items():
                times[mode].append(_seconds(lambda: run(r + 1)))
            for name, ref in references.items():
                times[name].append(_seconds(ref))
        med = {name: statistics.median(ts) for name, ts in times.items()}
        flops = workload_flops(settings.width, dim, settings.batch_size, seeds, settings.steps)
        for mode, (_, jitted) in contenders.items():
            basis = _mode_basis(mode, n, dim, settings)
            own = (
                kernel_flops(
                    basis, settings.width, n, dim, settings.batch_size, seeds, settings.steps
                )
                if basis
                else flops
            )
            entry = {
                "S": seeds,
                "mode": mode,
                "basis": basis,
                "seconds": med[mode],
                "steps_per_s": seeds * settings.steps / med[mode],
                "speedup_vs_numpy": med["numpy"] / med[mode],
                "speedup_vs_torch": med["torch"] / med[mode] if "torch" in med else None,
                "roofline_fraction": flops / med[mode] / 1e9 / limit_gflops,
                "gflops": flops / med[mode] / 1e9,
                "kernel_roofline_fraction": own / med[mode] / 1e9 / limit_gflops,
                "compile_seconds": max(first[mode] - med[mode], 0.0),
                "traces": compiled[mode] + _cache_size(jitted) - warm[mode],  # timed calls add none
                "numpy_seconds": med["numpy"],
                "torch_seconds": med.get("torch"),
                "repeats": settings.repeats,
                "steps": settings.steps,
            }
            results.append(entry)
            torch_note = (
                f"{entry['speedup_vs_torch']:.1f}x torch, " if entry["speedup_vs_torch"] else ""
            )
            log(
                f"  sweep S={seeds:<4d} {mode:<14s} {entry['seconds']:8.3f} s  "
                f"{entry['steps_per_s']:9.0f} "
                f"seed-steps/s  {entry['speedup_vs_numpy']:5.1f}x numpy, {torch_note}"
                f"{100 * entry['roofline_fraction']:4.1f}% of matmul limit, compile "
                f"{entry['compile_seconds']:.1f} s"
            )
    return results


# --------------------------------------------------------------------------- ODE


def _task_data(dataset: str | None, samples: int):
    """The ODE's and the cells' data: the given dataset, else the embedded MNIST digits."""
    from gflow import load_dataset

    return load_dataset(dataset or "mnist", n_per_class=samples // 2)


def _gd_at_equal_error(
    data, params0, ts, ode_P, ode_params, ode_seconds, settings: BenchSettings, log
) -> dict:
    """Full-batch GD (the flow's Euler scheme) at η, η/2 (and η/4 with ``ode_gd_levels = 3``) on
    the ODE's save grid, against the Richardson reference.

    Two levels: reference ``2·GD(η/2) − GD(η)`` (error O(η²), not measured); GD's error is O(η),
    so GD matches the ODE's error at ``η_eq = (η/2)·err_ODE/err_GD(η/2)``. Three levels: the
    reference is the second Richardson level ``(4 R(η/2) − R(η))/3`` with ``R(η) = 2·GD(η/2) −
    GD(η)``; its uncertainty is reported as ``‖R(η/2) − reference‖``; the errors are also taken
    on the `resolved_window` (where GD's sequence converges at first order), and there ``η_eq``
    comes from a power law ``err = c·η^p`` fitted to GD's three errors. GD's time at η_eq is its
    measured time per step times ``t_end/η_eq`` steps (an extrapolation outside the levels).

    Why GD's sequence may stop converging: `gate_margins` and `gate_chatter` of each level
    (neurons held on gate boundaries, where the field jumps, chatter across them at margins that
    shrink with η) and GD at η
    from starts perturbed by each of ``ode_perturbations`` (`_perturbed_gd`: how much of a change
    of the start the run carries to t_end)."""
    import jax

    from gflow import SGDConfig, train_gd

    t_end = float(ts[-1])
    interval = t_end / (len(ts) - 1)
    per_record = max(1, round(interval / settings.ode_gd_lr))
    levels = [
        per_record * 2**j for j in range(settings.ode_gd_levels)
    ]  # η, η/2[, η/4], on the save grid
    runs, solvers = [], []
    for k in levels:
        eta = interval / k
        cfg = SGDConfig(steps=k * (len(ts) - 1), record_every=k, snapshot_every=1)
        gd = jax.jit(
            lambda p, lr, data, cfg=cfg: train_gd(
                p, data, learning_rate=lr, config=cfg, throw=False
            )
        )
        compiled = gd.lower(params0, eta, data).compile()
        start = time.perf_counter()
        traj = _block(compiled(params0, eta, data))
        seconds = time.perf_counter() - start
        runs.append((eta, cfg.steps, seconds, traj))
        solvers.append(compiled)
        log(f"    GD eta={eta:.4g}: {cfg.steps} steps in {seconds:.1f} s")
    etas = [r[0] for r in runs]
    P_gd = [np.asarray(r[3].observables.P, np.float64) for r in runs]
    theta_gd = [[np.asarray(a, np.float64) for a in r[3].snapshots] for r in runs]
    P_ref, _ = richardson_reference(P_gd)
    params_ref, reference_gaps = richardson_reference(theta_gd)  # gaps: per save time, 3 levels
    out = {"gd_eta": etas[0], "gd_eta_half": etas[1], "gd_levels": etas}
    if reference_gaps is not None:
        out["reference_uncertainty"] = float(np.max(reference_gaps))
        out["reference"] = "second Richardson level of GD(eta), GD(eta/2), GD(eta/4)"
    else:
        out["reference"] = "Richardson 2*GD(eta/2) - GD(eta)"
    per_step = runs[-1][2] / runs[-1][1]
    out.update(
        gd_seconds_per_step=per_step,
        gd_seconds=[r[2] for r in runs],
        gd_loss_end=[float(np.asarray(r[3].observables.loss)[-1]) for r in runs],
    )
    x = np.asarray(data.x, np.float64)
    out["gate_margins"] = [gate_margins(th, x) for th in theta_gd]
    for eta, m in zip(etas, out["gate_margins"]):
        log(
            f"    GD eta={eta:.4g} at t_end: {m['boundary_pairs'][-1]} (neuron, sample) pairs "
            "within "
            f"{m['within']:.0e} of a gate boundary; median closest margin of the grown neurons "
            f"{m['median_closest_margin'][-1]:.1e}"
        )
    out["gate_chatter"] = [
        gate_chatter([a[-1] for a in th], eta, data) for th, eta in zip(theta_gd, etas)
    ]
    for eta, c in zip(etas, out["gate_chatter"]):
        log(
            f"    GD eta={eta:.4g}, {c['steps']} more steps from t_end: {c['pairs_chattering']} "
            "(neuron, sample) "
            f"gates flip at >= 1/4 of the steps ({c['pairs_flipping']} at least once); "
            f"{c['grown_chattering']} of "
            f"{c['grown']} grown neurons have one"
        )
    out["perturbations"] = [
        _perturbed_gd(solvers[0], params0, etas[0], data, eps, theta_gd[0], P_gd[0], log)
        for eps in settings.ode_perturbations
    ]
    errors = {"ode": trajectory_errors(ode_P, ode_params, P_ref, params_ref)}
    gd_errors = [trajectory_errors(P, th, P_ref, params_ref) for P, th in zip(P_gd, theta_gd)]
    out.update(
        trajectory_error=errors["ode"]["params"],
        trajectory_error_P=errors["ode"]["P"],
        gd_trajectory_error={"eta": gd_errors[0], "eta_half": gd_errors[1]},
        gd_trajectory_errors=[e["params"] for e in gd_errors],
    )
    if len(runs) == 2:
        for metric, suffix in (("params", ""), ("P", "_P")):
            eta_eq = etas[1] * errors["ode"][metric] / gd_errors[1][metric]
            _equal_error(out, suffix, eta_eq, per_step, t_end, ode_seconds)
        return out
    # Three levels: the full grid as above (power law through GD's errors), then the window.
    assert reference_gaps is not None  # three levels give the reference's uncertainty
    n = resolved_window(theta_gd)
    out.update(
        resolved_saves=n,
        resolved_until_t=float(ts[n - 1]),
        resolved_fraction=float(ts[n - 1]) / t_end,
    )
    window = lambda tree: [np.asarray(a)[:n] for a in tree]
    w_err = trajectory_errors(
        np.asarray(ode_P)[:n], window(ode_params), P_ref[:n], window(params_ref)
    )
    w_gd = [
        trajectory_errors(P[:n], window(th), P_ref[:n], window(params_ref))
        for P, th in zip(P_gd, theta_gd)
    ]
    out["window"] = {
        "trajectory_error": w_err["params"],
        "trajectory_error_P": w_err["P"],
        "gd_trajectory_errors": [e["params"] for e in w_gd],
        "gd_trajectory_errors_P": [e["P"] for e in w_gd],
        "reference_uncertainty": float(np.max(reference_gaps[:n])),
    }
    for target, ode_err, gd_errs in ((out, errors["ode"], gd_errors), (out["window"], w_err, w_gd)):
        for metric, suffix in (("params", ""), ("P", "_P")):
            _equal_error(
                target,
                suffix,
                power_law_eta(etas, [e[metric] for e in gd_errs], ode_err[metric]),
                per_step,
                t_end,
                ode_seconds,
            )
    return out


def _perturbed_gd(compiled, params0, eta, data, epsilon, theta, P, log) -> dict:
    """GD at η (the ``compiled`` run) from `perturbed_start`, against the unperturbed run
    ``theta``/``P``: how far a relative change ε of the start carries by each save time."""
    import jax

    start = time.perf_counter()
    traj = _block(compiled(perturbed_start(params0, epsilon, jax.random.key(11)), eta, data))
    seconds = time.perf_counter() - start
    gaps = relative_gaps([np.asarray(a, np.float64) for a in traj.snapshots], theta)
    P_new = np.asarray(traj.observables.P, np.float64)
    gaps_P = np.max(np.abs(P_new - P), axis=1) / np.max(P, axis=1)
    log(
        f"    GD eta={eta:.4g} from a start perturbed by {epsilon:.0e}: gap {gaps[0]:.1e} at t=0, "
        f"{gaps[-1]:.1e} at t_end (x{gaps[-1] / epsilon:.2g}), {seconds:.1f} s"
    )
    return {
        "epsilon": epsilon,
        "gap_params": [float(g) for g in gaps],
        "gap_P": [float(g) for g in gaps_P],
        "amplification_end": float(gaps[-1] / epsilon),
        "seconds": seconds,
    }


def _equal_error(
    out: dict, suffix: str, eta_eq, per_step: float, t_end: float, ode_seconds: float
) -> None:
    """GD's time at η_eq and the ODE/GD ratio (None where η_eq is undefined)."""
    gd_seconds = per_step * t_end / eta_eq if eta_eq else None
    out[f"gd_eta_equal_error{suffix}"] = eta_eq
    out[f"gd_seconds_equal_error{suffix}"] = gd_seconds
    out[f"ode_over_gd_equal_error{suffix}"] = ode_seconds / gd_seconds if gd_seconds else None


def _flow_through_drop(
    ds, width: int, dtype, settings: BenchSettings, log, *, compare_gd: bool
) -> dict:
    """Loss-drop time from a cheap SGD run, then the ODE over 1.5× that time, SGD over the same
    flow time and (``compare_gd``) full-batch GD at the ODE's trajectory error
    (`_gd_at_equal_error`)."""
    import jax
    import jax.numpy as jnp

    from gflow import SGDConfig, balance_drift, gradient_flow, init_params, training_data
    from gflow._chunked import train_sgd_chunked
    from gflow._race import loss_drop_time

    config = _ode_config(settings, dtype)
    data = training_data(ds, dtype)
    params0 = init_params(jax.random.key(3), width, ds.dim, settings.sigma, dtype=dtype)
    lr, beta, chunk = settings.learning_rate, settings.momentum, settings.chunk
    per_unit_time = (1.0 - beta) / lr  # SGD steps per unit of flow time
    # Find the loss drop with SGD (cheap), doubling the horizon until the loss has dropped.
    horizon = 400.0
    while True:
        steps = _round_up(horizon * per_unit_time, settings.record_every)
        cfg = SGDConfig(
            steps=steps, record_every=settings.record_every, batch_size=settings.batch_size
        )
        probe = train_sgd_chunked(
            params0,
            jax.random.key(4),
            data,
            learning_rate=lr,
            momentum=beta,
            config=cfg,
            chunk=chunk,
            throw=False,
        )
        loss = np.asarray(probe.observables.loss)
        t_drop = loss_drop_time(np.asarray(probe.t), loss)
        if (np.isfinite(t_drop) and loss[-1] < 0.5 * loss[0]) or horizon >= 3200:
            break
        horizon *= 2
    t_end = 1.5 * t_drop if np.isfinite(t_drop) else horizon
    ts = jnp.linspace(0.0, t_end, 61, dtype=dtype)
    # Full parameters at every save time only when they are compared with GD's.
    solve = jax.jit(
        lambda p, grid, data: gradient_flow(
            p,
            data,
            grid,
            snapshot_times=grid if compare_gd else None,
            config=config,
            throw=False,
            return_stats=True,
        )
    )
    start = time.perf_counter()
    compiled = solve.lower(params0, ts, data).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    traj, stats = _block(compiled(params0, ts, data))
    ode_s = time.perf_counter() - start

    sgd_steps = _round_up(t_end * per_unit_time, settings.record_every)
    sgd_cfg = SGDConfig(
        steps=sgd_steps, record_every=settings.record_every, batch_size=settings.batch_size
    )
    # Data are arguments, not closed-over constants: XLA would constant-fold G = X Xᵀ at compile
    # time.
    sgd = jax.jit(
        lambda p, key, eta, data: train_sgd_chunked(
            p,
            key,
            data,
            learning_rate=eta,
            momentum=beta,
            config=sgd_cfg,
            chunk=chunk,
            observables="norms",
            throw=False,
        )
    )
    sgd_compiled = sgd.lower(params0, jax.random.key(4), lr, data).compile()
    sgd_s = statistics.median(
        _seconds(lambda: sgd_compiled(params0, jax.random.key(4), lr, data)) for _ in range(3)
    )
    sgd_norms = sgd_compiled(params0, jax.random.key(4), lr, data).observables
    ode_loss = np.asarray(traj.observables.loss)
    # A solve stopped by max_steps leaves the later records unfilled: report what it reached.
    valid = np.isfinite(ode_loss)
    t_reached = float(np.asarray(ts)[valid][-1])
    from gflow._trajectory import status_message

    gauss = config.solver.startswith("gauss")
    fixed = not config.adaptive
    result = {
        "dtype": jnp.dtype(dtype).name,
        "N": int(ds.n_samples),
        "D": int(ds.dim),
        "d": width,
        "dataset": ds.name,
        "solver": config.solver,
        "dt": config.dt0 if fixed else None,
        "rtol": None if fixed else config.rtol,
        "balance_projection": config.project_balance,
        "balance_defect_max": float(stats.balance_defect_max) if config.project_balance else None,
        "t_drop": float(t_drop),
        "t_end": float(t_end),
        "status": status_message(traj.status),
        "solver_steps": int(stats.num_steps),
        "rejected_steps": int(stats.num_rejected_steps),
        "gradient_evaluations": int(stats.evaluations),
        "stage_iterations_max": int(stats.stage_iterations_max) if gauss else None,
        "seconds": ode_s,
        "compile_seconds": compile_s,
        "ms_per_solver_step": 1e3 * ode_s / max(int(stats.num_steps), 1),
        "ms_per_gradient_evaluation": 1e3 * ode_s / max(int(stats.evaluations), 1),
        "t_reached": t_reached,
        "balance_drift": float(
            np.max(np.asarray(balance_drift(jax.tree.map(lambda a: a[valid], traj.observables))))
        ),
        "loss_start": float(ode_loss[0]),
        "loss_end": float(ode_loss[valid][-1]),
        # The flow never raises the loss: a rise between saves means the steps do not track it.
        "loss_rises": int(np.sum(np.diff(ode_loss[valid]) > 1e-9 * abs(float(ode_loss[0])))),
        "loss": [float(v) for v in ode_loss[valid]],
        "sgd_steps": sgd_steps,
        "sgd_seconds": sgd_s,
        "sgd_balance_drift": float(
            np.max(norms_balance_drift(sgd_norms.w_norm, sgd_norms.v_norm, sgd_norms.b))
        ),
        # SGD's cost is linear in flow time: compare over the flow time the ODE covered.
        "ode_over_sgd": ode_s / (sgd_s * t_reached / t_end) if t_reached > 0 else None,
    }
    projected = (
        f" (balance projected; largest step defect removed {result['balance_defect_max']:.1e})"
        if config.project_balance
        else ""
    )
    log(
        f"  ode {result['dtype']} N={result['N']} D={result['D']} d={width} {config.solver}: "
        f"{result['solver_steps']} steps, {result['gradient_evaluations']} gradients "
        f"({result['status']}; reached t={result['t_reached']:.0f} of {t_end:.0f}, loss "
        f"{result['loss_start']:.3f} -> "
        f"{result['loss_end']:.3f}, {result['loss_rises']} rises) in {ode_s:.1f} s (compile "
        f"{compile_s:.1f} s), "
        f"drift {result['balance_drift']:.1e}{projected}; "
        f"SGD over the same flow time: {sgd_steps} steps in {sgd_s:.2f} s -> ODE/SGD = "
        f"{result['ode_over_sgd'] or float('nan'):.0f}x"
    )
    if compare_gd:
        if int(traj.status) != 0:
            result["gd_comparison"] = None
            log("    no GD comparison: the ODE did not reach t_end")
        else:
            snaps = jax.tree.map(
                lambda a: a[1:-1], traj.snapshots
            )  # the save grid, without the ends added
            result["ode_gate_margins"] = m = gate_margins(snaps, np.asarray(data.x, np.float64))
            log(
                f"    ODE at t_end: {m['boundary_pairs'][-1]} (neuron, sample) pairs within "
                f"{m['within']:.0e} of a "
                "gate boundary; median closest margin of the grown neurons "
                f"{m['median_closest_margin'][-1]:.1e}"
            )
            result.update(
                _gd_at_equal_error(
                    data, params0, np.asarray(ts), traj.observables.P, snaps, ode_s, settings, log
                )
            )
            log("    " + _equal_error_line("whole run", result, result["gd_trajectory_errors"]))
            if "window" in result:
                w = result["window"]
                log(
                    f"    GD converges at first order up to t={result['resolved_until_t']:.0f} of "
                    f"{t_end:.0f} "
                    f"(reference uncertainty there {w['reference_uncertainty']:.1e}, whole run "
                    f"{result['reference_uncertainty']:.1e})"
                )
                log("    " + _equal_error_line("resolved window", w, w["gd_trajectory_errors"]))
    return result


def _equal_error_line(label: str, r: dict, gd_errors) -> str:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    return (
        f"{label}: trajectory error (params) ODE {r['trajectory_error']:.2e}, GD "
        + ", ".join(f"{e:.2e}" for e in gd_errors)
        + f"; GD reaches the ODE's error at eta={fmt(r['gd_eta_equal_error'], '.3g')} -> ODE/GD = "
        f"{fmt(r['ode_over_gd_equal_error'], '.2f')} (P: ODE {r['trajectory_error_P']:.2e}, ODE/GD "
        "= "
        f"{fmt(r['ode_over_gd_equal_error_P'], '.2f')})"
    )


def _round_up(value: float, multiple: int) -> int:
    return max(multiple, int(math.ceil(value / multiple)) * multiple)


def bench_ode(settings: BenchSettings, *, dataset: str | None, log=print) -> dict:
    """The flow through the loss drop in float32 and float64, with SGD over the same flow time;
    the float64 solve also against full-batch GD at equal trajectory error."""
    import jax
    import jax.numpy as jnp

    out = {}
    loaded = {}  # samples -> dataset: read once when both solves use the same N

    def task(samples):
        if samples not in loaded:
            loaded[samples] = _task_data(dataset, samples)
        return loaded[samples]

    if "float32" in settings.ode_dtypes:
        out["float32"] = _flow_through_drop(
            task(settings.ode_samples),
            settings.ode_width,
            jnp.float32,
            settings,
            log,
            compare_gd=False,
        )
    if "float64" in settings.ode_dtypes:
        was_x64 = bool(jax.config.read("jax_enable_x64"))
        jax.config.update("jax_enable_x64", True)
        try:
            ds64 = task(settings.ode64_samples)
            out["float64"] = _flow_through_drop(
                ds64, settings.ode64_width, jnp.float64, settings, log, compare_gd=True
            )
        finally:
            jax.config.update("jax_enable_x64", was_x64)
    return out


# --------------------------------------------------------------------------- stable cells


def _cells_module():
    """``gflow._cells`` and its Algorithm-1 function, or ``(None, reason)``."""
    if importlib.util.find_spec("gflow._cells") is None:
        return None, "gflow._cells is not present in this installation"
    module = importlib.import_module("gflow._cells")
    for name in ("stable_cells", "estimate_stable_cells"):
        if callable(getattr(module, name, None)):
            return getattr(module, name), name
    return None, "gflow._cells has no stable_cells function"


def bench_cells(settings: BenchSettings, *, dataset: str | None, log=print) -> dict:
    """Algorithm 1 (docs/theory.md §3) with M probes on N samples: the first call (compilation
    included),
    then the median of ``settings.repeats`` timed calls on one key, and the estimates."""
    import jax
    import jax.numpy as jnp

    from gflow import training_data

    fn, name = _cells_module()
    if fn is None:
        log(f"  cells: skipped ({name})")
        return {"available": False, "reason": name}
    ds = _task_data(dataset, settings.cells_samples)
    data = training_data(ds, jnp.float32)
    start = time.perf_counter()
    first = fn(data, jax.random.key(0), probes=settings.cells_probes)
    first_s = time.perf_counter() - start
    times = []
    for _ in range(max(settings.repeats, 1)):
        start = time.perf_counter()
        est = fn(data, jax.random.key(1), probes=settings.cells_probes)
        times.append(time.perf_counter() - start)
    second_s = float(np.median(times))
    per_kappa = {
        str(k): {
            "estimate": int(e.estimate),
            "iterations": len(e.curve),
            "converged": bool(e.converged),
        }
        for k, e in est.items()
    }
    del first
    result = {
        "available": True,
        "function": f"gflow._cells.{name}",
        "M": settings.cells_probes,
        "N": int(ds.n_samples),
        "D": int(ds.dim),
        "dataset": ds.name,
        "seconds": second_s,
        "seconds_all": times,
        "first_call_seconds": first_s,
        "compile_seconds": max(first_s - second_s, 0.0),
        "kappa": per_kappa,
    }
    log(
        f"  cells M={settings.cells_probes} N={ds.n_samples} D={ds.dim}: {second_s:.1f} s, median "
        "of "
        f"{len(times)} ({min(times):.1f}–{max(times):.1f} s; first call {first_s:.1f} s); "
        "estimates " + ", ".join(f"κ={k}: {v['estimate']}" for k, v in per_kappa.items())
    )
    return result


# --------------------------------------------------------------------------- memory


def memory_child(spec: str) -> None:
    """Run in a fresh process: a sweep of many seeds in groups, norms streamed to ``.npy`` files.

    Prints one JSON line with the peak RSS (`_peak_rss_bytes`) before and after the sweep.
    """
    import jax
    import jax.numpy as jnp

    from gflow import SGDConfig, load_dataset, training_data
    from gflow._chunked import train_sgd_seeds_shared_order

    opts = json.loads(spec)
    ds = load_dataset(
        "clusters", n_samples=opts["samples"], dim=opts["dim"], seed=0, test_samples=0
    )
    data = training_data(ds, jnp.float32)
    config = SGDConfig(
        steps=opts["steps"], record_every=opts["record_every"], batch_size=opts["batch_size"]
    )
    seeds, group, width = opts["seeds"], opts["group"], opts["width"]
    baseline = _peak_rss_bytes()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        shape = (seeds, config.num_records, width)
        files = {
            name: np.lib.format.open_memmap(
                Path(tmp) / f"{name}.npy", mode="w+", dtype=np.float32, shape=shape
            )
            for name in ("w_norm", "v_norm", "b")
        }
        for first in range(0, seeds, group):
            count = min(group, seeds - first)
            keys = jax.random.split(jax.random.fold_in(jax.random.key(11), first // group), group)
            params0 = jax.vmap(lambda k: _init_one(k, width, opts["dim"], opts["sigma"]))(keys)
            traj = train_sgd_seeds_shared_order(
                params0,
                jax.random.key(5),
                data,
                learning_rate=opts["learning_rate"],
                momentum=opts["momentum"],
                config=config,
                chunk=opts["chunk"],
                observables="norms",
            )
            for name, array in files.items():
                array[first : first + count] = np.asarray(getattr(traj.observables, name))[:count]
            del traj, params0
        for array in files.values():
            array.flush()
        stored = sum(a.nbytes for a in files.values())
        del files
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "baseline_rss_bytes": baseline,
                "peak_rss_bytes": _peak_rss_bytes(),
                "seconds": seconds,
                "norms_bytes_streamed": stored,
            }
        )
    )


def _init_one(key, width, dim, sigma):
    from gflow import init_params

    return init_params(key, width, dim, sigma)


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process image, in bytes.

    Linux's ``VmHWM`` (``/proc/self/status``) is the high-water mark of this image alone;
    ``resource.getrusage(...).ru_maxrss`` also carries over the peak of the process that
    spawned it (the kernel keeps the larger across ``exec``), so it is only the fallback.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def bench_memory(settings: BenchSettings, *, log=print) -> dict:
    """Peak RSS of a ``memory_seeds`` sweep (groups of ``memory_group``), in a subprocess."""
    opts = {
        "seeds": settings.memory_seeds,
        "group": settings.memory_group,
        "steps": settings.memory_steps,
        "width": settings.width,
        "dim": settings.dim,
        "samples": settings.samples,
        "batch_size": settings.batch_size,
        "record_every": settings.record_every,
        "chunk": settings.chunk,
        "learning_rate": settings.learning_rate,
        "momentum": settings.momentum,
        "sigma": settings.sigma,
    }
    code = "import sys; from gflow._benchmarking import memory_child; memory_child(sys.argv[1])"
    proc = subprocess.run(
        python_command("-c", code, json.dumps(opts)), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"memory benchmark subprocess failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    gib = 2.0**30
    result = {
        "seeds": settings.memory_seeds,
        "group": settings.memory_group,
        "steps": settings.memory_steps,
        "d": settings.width,
        "D": settings.dim,
        "N": settings.samples,
        "peak_rss_gib": child["peak_rss_bytes"] / gib,
        "baseline_rss_gib": child["baseline_rss_bytes"] / gib,
        "seconds": child["seconds"],
        "seed_steps_per_s": settings.memory_seeds * settings.memory_steps / child["seconds"],
        "norms_streamed_mib": child["norms_bytes_streamed"] / 2.0**20,
    }
    log(
        f"  memory: {settings.memory_seeds} seeds in groups of {settings.memory_group}, peak RSS "
        f"{result['peak_rss_gib']:.2f} GiB (after imports and data: "
        f"{result['baseline_rss_gib']:.2f} GiB), "
        f"{child['seconds']:.1f} s"
    )
    return result


# --------------------------------------------------------------------------- driver


def versions() -> dict:
    import jax

    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "jax": jax.__version__,
    }
    for name in ("jaxlib", "optax", "diffrax", "equinox"):
        if importlib.util.find_spec(name) is not None:
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
    torch = _torch()
    out["torch"] = torch.__version__ if torch is not None else None
    from gflow import __version__

    out["gflow"] = __version__
    return out


def run_bench(
    settings: BenchSettings,
    *,
    sections=SECTIONS,
    dataset: str | None = None,
    use_torch: bool = True,
    log=print,
    save: Callable[[dict], None] | None = None,
) -> dict:
    """Run the requested sections; returns the JSON-ready report.

    ``save(report)`` (e.g. `write_report`) is called after each section with the report so far,
    so that what was measured survives a later failure; a section that raises is recorded under
    ``failed`` (section, error, traceback), saved, and the exception propagates.
    """
    bad = [s for s in sections if s not in SECTIONS]
    if bad or not sections:
        raise ValueError(f"sections must be a non-empty subset of {SECTIONS}; got {sections!r}")
    torch = _torch() if use_torch else None
    threads = thread_counts()
    if torch is not None:
        torch.set_num_threads(
            threads["cores"]
            if "GFLOW_BENCH_THREADS" not in os.environ
            else int(os.environ["GFLOW_BENCH_THREADS"])
        )
        threads = thread_counts()
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "threads": threads,
            "load_average_start": list(os.getloadavg()),
        },
        "versions": versions(),
        "settings": dataclasses.asdict(settings),
        "sections": list(sections),
    }
    log(
        f"gflow bench: {threads['cores']} cores; threads numpy {threads['numpy_blas']}, xla "
        f"{threads['xla']}"
        + (
            f", torch {threads['torch']}"
            if "torch" in threads
            else ", torch not importable (reference skipped)"
        )
    )
    limit = matmul_limit(settings.matmul_size, settings.repeats)
    report["matmul"] = limit
    log(
        f"  matmul limit {limit['limit_gflops']:.1f} GFLOP/s (numpy {limit['numpy_gflops']:.1f}, "
        f"xla {limit['xla_gflops']:.1f}; float32 {limit['size']}^3)"
    )
    runners = {
        "sweep": lambda: bench_sweep(
            settings,
            dataset=dataset,
            limit_gflops=limit["limit_gflops"],
            use_torch=torch is not None,
            log=log,
        ),
        "memory": lambda: bench_memory(settings, log=log),
        "cells": lambda: bench_cells(settings, dataset=dataset, log=log),
        "ode": lambda: bench_ode(settings, dataset=dataset, log=log),
    }
    for name in ("sweep", "memory", "cells", "ode"):  # this order, whatever the order asked
        if name not in sections:
            continue
        try:
            report[name] = runners[name]()
        except BaseException as err:  # recorded, saved, then raised again
            report["failed"] = {
                "section": name,
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(),
            }
            report["machine"]["load_average_end"] = list(os.getloadavg())
            if save is not None:
                save(report)
            raise
        if save is not None:
            save(report)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    if save is not None:
        save(report)
    return report


def strict_json(value):
    """The report with NaN and ±inf replaced by null (JSON has no non-finite numbers)."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(report: dict, path: str | os.PathLike) -> None:
    """Write the report as strict JSON (`strict_json`), atomically: a reader never sees half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(strict_json(report), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def python_command(*args: str) -> list[str]:
    """``python -P ARGS`` with this interpreter: ``-P`` keeps the working directory (and a
    script's folder) off ``sys.path``, so a child started from a folder holding a ``gflow/``
    checkout imports the installed gflow, not that folder as a namespace package."""
    return [sys.executable, "-P", *args]


def thread_environment(threads: int) -> tuple[dict[str, str], list[int]]:
    """Environment and CPU cores that limit NumPy's BLAS, XLA and torch to ``threads``.

    Sets ``OMP/OPENBLAS/MKL_NUM_THREADS`` and ``GFLOW_BENCH_THREADS`` (read by `run_bench` for
    torch), XLA's Eigen pool off for one thread, and returns the first ``threads`` cores of this
    process's affinity. They apply only to a process started with them (thread pools start at
    import), e.g. ``subprocess.run(..., env=env, preexec_fn=lambda: os.sched_setaffinity(0,
    cores))``.
    """
    cores = sorted(os.sched_getaffinity(0))
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= len(cores):
        raise ValueError(
            f"threads must be between 1 and the {len(cores)} available cores; got {threads!r}"
        )
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["GFLOW_BENCH_THREADS"] = str(threads)
    if threads == 1:
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        ).strip()
    return env, cores[:threads]


def settings_with(base: BenchSettings, assignments: Sequence[str]) -> BenchSettings:
    """``base`` with fields set from ``NAME=VALUE`` strings, each VALUE read as the type of the
    field's value in ``base`` (tuples comma-separated), then validated by `BenchSettings`; fewer
    ``memory_seeds`` than ``memory_group`` shrink the group, as ``gflow bench --memory-seeds``.

    >>> settings_with(QUICK, ["ode_solver=heun", "seeds=1,2"]).seeds
    (1, 2)
    """
    fields = {f.name for f in dataclasses.fields(BenchSettings)}
    overrides: dict[str, Any] = {}
    for text in assignments:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or name not in fields:
            raise ValueError(
                f"settings are NAME=VALUE, NAME one of {', '.join(sorted(fields))}; got {text!r}"
            )
        current = getattr(base, name)
        kind = type(current[0]) if isinstance(current, tuple) and current else type(current)
        if kind is tuple:  # an empty tuple: ode_perturbations
            kind = float
        try:
            if isinstance(current, tuple):
                items = [v.strip() for v in value.split(",") if v.strip()]
                overrides[name] = tuple(kind(v) for v in items if v.lower() != "none")
            else:
                overrides[name] = kind(value.strip())
        except ValueError:
            label = {int: "integers", float: "numbers", str: "text"}.get(kind, "values")
            raise ValueError(f"{name} takes {label}; got {value!r}") from None
    if "memory_seeds" in overrides and "memory_group" not in overrides:  # as gflow bench does
        overrides["memory_group"] = min(base.memory_group, overrides["memory_seeds"])
    return dataclasses.replace(base, **overrides)

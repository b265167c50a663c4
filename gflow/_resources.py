"""Memory a run or sweep will need, estimated before anything is allocated or compiled.

A sweep's peak is roughly the sum of its data, one chunk of members in the compiled program, the
records and final parameters of every member, and bookkeeping; ``T`` records of a width-``d``
network take about ``T·(13·d + 4)`` numbers. The estimate is an upper bound of the right order,
made to refuse in one line, before any work, a request that cannot fit. Each term:
docs/numerics.md §7.

Example:
    >>> from gflow._config import RunConfig
    >>> cfg = RunConfig(trainer="gd", width=8, steps=100, record_every=10)
    >>> estimate = sweep_memory(cfg, n_samples=64, dim=20, n_test=64)
    >>> estimate.total < 2**20
    True
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ._config import RunConfig

# `gflow.Observables`: w_norm, b, v_norm, phi, P, Q, e_norm, cos_delta, target_strength,
# cos_target in the simulation dtype and kappa (int8), active (int32), cell_hash (uint32), per
# neuron; loss, accuracy, test_loss, test_accuracy per record. Status and step count: int32.
_FLOAT_FIELDS_PER_NEURON = 10
_INT_BYTES_PER_NEURON = 1 + 4 + 4
_SCALAR_FIELDS = 4
_STATUS_BYTES = 4 + 4
# Parameter-sized buffers per member inside the program: parameters, gradient, momentum,
# update, two snapshots (SGD/GD); the flow adds the solver's stages and error estimate.
_STATE_COPIES = {"sgd": 6, "gd": 6, "flow": 14}
# [d, samples] arrays per member: pre-activations, gates and their backward pass.
_ACTIVATION_COPIES = 4
# One seed as Python objects: an int (32 bytes), a slot in a list and a tuple (16), and an
# entry of the set that checks the seeds are distinct (about 50).
_BYTES_PER_SEED = 100
# One save time of the flow as a Python float in the compiled program's static key.
_BYTES_PER_SAVE_TIME = 40
_MEMINFO = Path("/proc/meminfo")


class InsufficientMemory(ValueError):
    """The estimated memory exceeds what the machine has available."""


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a computation needs, by part.

    Attributes:
        parts: ``(name, bytes)`` pairs, e.g. ``("results of all runs", 3_200_000)``.
    """

    parts: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(b for _, b in self.parts)

    def describe(self) -> str:
        """``about 12 GiB (results of all runs 11 GiB, one chunk in the program 1 GiB)``: the
        total and its largest parts (the only part named after "for")."""
        parts = sorted((p for p in self.parts if p[1]), key=lambda p: -p[1])
        total = f"about {format_bytes(self.total)}"
        if len(parts) == 1:
            return f"{total} for {parts[0][0]}"
        detail = ", ".join(f"{name} {format_bytes(b)}" for name, b in parts[:3])
        return f"{total} ({detail})" if detail else total


def format_bytes(n: float) -> str:
    """``1536`` → ``'1.5 KiB'``; three significant digits, binary units up to EiB.

    Example:
        >>> format_bytes(3 * 2**30), format_bytes(512)
        ('3 GiB', '512 B')
    """
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    k = 0
    while n >= 1024 and k < len(units) - 1:
        n /= 1024
        k += 1
    return f"{n:.3g} {units[k]}"


def available_memory() -> tuple[int, str] | None:
    """``(bytes, source)``: memory the machine can give a new computation without swapping.

    ``MemAvailable`` of ``/proc/meminfo`` (Linux), else the free physical pages of
    ``os.sysconf``; ``None`` where neither can be read.
    """
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable"
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    if pages > 0 and size > 0:
        return pages * size, "free physical memory"
    return None


def count_seed_range(value) -> int | None:
    """The number of seeds an ``"A:B"`` string names (``B − A``), without building them; None
    for any other form (ints and lists are already in memory; bad ranges are left to
    `gflow._config.parse_seeds`, which owns the format)."""
    if not isinstance(value, str) or ":" not in value:
        return None
    try:
        start, stop = (int(p) for p in value.strip().split(":"))
    except ValueError:
        return None
    return stop - start if stop > start else None


def seeds_memory(count: int) -> MemoryEstimate:
    """What ``count`` seeds cost as Python objects while the configuration checks them."""
    return MemoryEstimate(((f"{count:,} seeds as Python integers", count * _BYTES_PER_SEED),))


def _num_records(config: RunConfig, n_samples: int) -> int:
    if config.trainer == "flow":
        if config.t_grid is not None:
            return len(config.t_grid)
        assert config.save_points is not None  # set by RunConfig
        return config.save_points
    return config.sgd_config(n_samples).num_records


def sweep_memory(
    config: RunConfig, *, n_samples: int, dim: int, n_test: int, num_devices: int = 1
) -> MemoryEstimate:
    """Estimate the peak memory of `gflow._sweep.sweep` (``config`` on N samples of dimension
    D, ``n_test`` held out, members split over ``num_devices``); see docs/numerics.md §7.

    Reads only sizes from ``config`` (no seed list, time grid or array is built).
    """
    assert config.width is not None and config.chunk_size is not None  # set by RunConfig
    assert config.seeds is not None and config.dtype is not None
    itemsize = np.dtype(config.dtype).itemsize
    width, samples = config.width, n_samples + n_test
    n_seeds, n_points = len(config.seeds), len(config.points())
    members = n_points * n_seeds
    chunk = num_devices * math.ceil(min(config.chunk_size, members) / num_devices)
    records = _num_records(config, n_samples)
    record = records * (
        (_FLOAT_FIELDS_PER_NEURON * width + _SCALAR_FIELDS) * itemsize
        + _INT_BYTES_PER_NEURON * width
    )
    params = width * (dim + 3) * itemsize
    working = (
        _STATE_COPIES[config.trainer] * params + _ACTIVATION_COPIES * width * samples * itemsize
    )
    save_times = records * _BYTES_PER_SAVE_TIME if config.trainer == "flow" else 0
    return MemoryEstimate(
        (
            ("records and final weights of all runs", members * (record + params + _STATUS_BYTES)),
            (f"one chunk of {chunk} run(s) in the program", chunk * (record + params + working)),
            ("data", samples * dim * (4 + itemsize * num_devices)),
            ("seeds and time grid", members * 32 + n_points * records * 8 + save_times),
        )
    )


def require_memory(estimate: MemoryEstimate, what: str) -> str | None:
    """Refuse ``estimate`` when it exceeds the memory the machine has available now
    (`available_memory`).

    Args:
        estimate: the `MemoryEstimate`.
        what: the request, for the message (``"this sweep"``, ``"--seeds 0:2000000000"``).

    Returns:
        None when the estimate fits; a one-line note when the available memory cannot be read
        (the check is then skipped).

    Raises:
        InsufficientMemory: one line with the estimate and the available memory.
    """
    found = available_memory()
    if found is None:
        return (
            f"the available memory cannot be read (neither MemAvailable in {_MEMINFO} nor "
            f"os.sysconf); memory check skipped ({what} needs {estimate.describe()})"
        )
    free, source = found
    if estimate.total > free:
        raise InsufficientMemory(
            f"{what} would need {estimate.describe()}, more than the {format_bytes(free)} of "
            f"memory available ({source}); ask for fewer seeds, records "
            "(--steps, --record-every, --save-points), a smaller --width or --chunk-size."
        )
    return None

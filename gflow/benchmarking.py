"""The timing harness of ``gflow bench`` and of the scripts in ``benchmarks/``.

`run_bench` runs the sections in `SECTIONS` with the sizes of a `BenchSettings` (`QUICK`: the
small ones of ``--quick``) and returns a JSON-ready report; `write_report` saves it. Each
section is also callable alone (`bench_sweep`, `bench_ode`, `bench_cells`, `bench_memory`), and
the references gflow is timed against are `numpy_sgd_sweep` and `torch_sgd_sweep`. The method
(same-run ratios, medians, compile time apart) is in ``benchmarks/README.md``; the
discretisation analysis of the ODE section is in docs/theory.md §1 and §8.1.

Example:
    >>> from gflow.benchmarking import QUICK, settings_with
    >>> settings_with(QUICK, ["ode_dtypes=float64"]).ode_dtypes
    ('float64',)
"""

from ._benchmarking import QUICK as QUICK
from ._benchmarking import SECTIONS as SECTIONS
from ._benchmarking import BenchSettings as BenchSettings
from ._benchmarking import bench_cells as bench_cells
from ._benchmarking import bench_memory as bench_memory
from ._benchmarking import bench_ode as bench_ode
from ._benchmarking import bench_sweep as bench_sweep
from ._benchmarking import kernel_flops as kernel_flops
from ._benchmarking import matmul_limit as matmul_limit
from ._benchmarking import numpy_batch_orders as numpy_batch_orders
from ._benchmarking import numpy_sgd_sweep as numpy_sgd_sweep
from ._benchmarking import python_command as python_command
from ._benchmarking import run_bench as run_bench
from ._benchmarking import settings_with as settings_with
from ._benchmarking import strict_json as strict_json
from ._benchmarking import thread_environment as thread_environment
from ._benchmarking import torch_sgd_sweep as torch_sgd_sweep
from ._benchmarking import workload_flops as workload_flops
from ._benchmarking import write_report as write_report

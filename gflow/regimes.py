"""The lazy–rich map: the linearised twin, the tangent kernel and the measures that tell the lazy
regime from the rich one (docs/regimes.md)."""

from ._regimes import DEFAULT_PROBE as DEFAULT_PROBE
from ._regimes import KERNEL_CHUNK_ENTRIES as KERNEL_CHUNK_ENTRIES
from ._regimes import THRESHOLD as THRESHOLD
from ._regimes import TOP_FRACTION as TOP_FRACTION
from ._regimes import TwinRun as TwinRun
from ._regimes import check_params as check_params
from ._regimes import compare_twins as compare_twins
from ._regimes import function_distance as function_distance
from ._regimes import kernel as kernel
from ._regimes import kernel_change as kernel_change
from ._regimes import kernel_distance as kernel_distance
from ._regimes import relative_change as relative_change
from ._regimes import top_share as top_share
from ._regimes import train_twins as train_twins
from ._regimes import twin_run as twin_run

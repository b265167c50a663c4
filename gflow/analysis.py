"""Discretisation analysis: trajectory errors against references, Richardson extrapolation, gate
margins and chatter."""

from ._discretisation import gate_chatter as gate_chatter
from ._discretisation import gate_margins as gate_margins
from ._discretisation import grown_neurons as grown_neurons
from ._discretisation import norms_balance_drift as norms_balance_drift
from ._discretisation import perturbed_start as perturbed_start
from ._discretisation import power_law_eta as power_law_eta
from ._discretisation import relative_gaps as relative_gaps
from ._discretisation import resolved_window as resolved_window
from ._discretisation import richardson as richardson
from ._discretisation import richardson_reference as richardson_reference
from ._discretisation import trajectory_errors as trajectory_errors

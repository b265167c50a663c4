"""The model and its observables: parameters, the `Model` (activation, loss, linearisation), loss,
closed-form gradient, gating patterns, the per-neuron quantities recorded along a trajectory
(docs/theory.md §1–§4, §10)."""

from ._network import ACTIVATIONS as ACTIVATIONS
from ._network import LOSSES as LOSSES
from ._network import PAPER as PAPER
from ._network import Inputs as Inputs
from ._network import Labels as Labels
from ._network import Model as Model
from ._network import Params as Params
from ._network import accuracy as accuracy
from ._network import activation as activation
from ._network import balance as balance
from ._network import closed_form_gradient as closed_form_gradient
from ._network import gate_slopes as gate_slopes
from ._network import gating_pattern as gating_pattern
from ._network import init_params as init_params
from ._network import linearised as linearised
from ._network import logit_loss as logit_loss
from ._network import logits as logits
from ._network import loss as loss
from ._network import loss_and_grad as loss_and_grad
from ._network import output_residuals as output_residuals
from ._network import parse_activation as parse_activation
from ._network import per_sample_loss as per_sample_loss
from ._network import preactivations as preactivations
from ._network import residuals as residuals
from ._observables import Observables as Observables
from ._observables import TrainingData as TrainingData
from ._observables import balance_drift as balance_drift
from ._observables import cell_hash as cell_hash
from ._observables import cell_signed_sums as cell_signed_sums
from ._observables import check_labels as check_labels
from ._observables import class_alignment as class_alignment
from ._observables import error_vectors as error_vectors
from ._observables import initial_residuals as initial_residuals
from ._observables import observe as observe
from ._observables import outgoing_alignment as outgoing_alignment
from ._observables import phase1_drive as phase1_drive
from ._observables import phase1_targets as phase1_targets
from ._observables import safe_cosine as safe_cosine
from ._observables import safe_norm as safe_norm
from ._observables import small_init_unlocking_rate as small_init_unlocking_rate
from ._observables import target_directions as target_directions
from ._observables import training_data as training_data

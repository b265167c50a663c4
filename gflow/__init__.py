"""gflow: gradient-flow dynamics of one-hidden-layer ReLU networks in JAX.

Mutual alignment, unlocking and racing ("It's Not a Lottery, It's a Race"): a simulator of the
continuous gradient flow (diffrax) and of small-learning-rate GD/SGD (optax), with per-neuron
observables compared against the paper's closed forms.
"""

# The public modules, one per layer (arrows run one way: network <- solvers, trainers <- theory,
# cells, capacity, analysis <- runs <- cli); the names imported below are the most used of them.
from . import analysis as analysis
from . import capacity as capacity
from . import cells as cells
from . import datasets as datasets
from . import network as network
from . import regimes as regimes
from . import runs as runs
from . import solvers as solvers
from . import theory as theory
from . import trainers as trainers
from ._capacity import merge_report as merge_report
from ._capacity import merged_network as merged_network
from ._capacity import neuron_clusters as neuron_clusters
from ._capacity import norm_pruning_curve as norm_pruning_curve
from ._config import RunConfig as RunConfig
from ._data import DATASET_KINDS as DATASET_KINDS
from ._data import PREPROCESS_MODES as PREPROCESS_MODES
from ._data import cifar_binary as cifar_binary
from ._data import gaussian_clusters as gaussian_clusters
from ._data import gaussian_clusters_with_means as gaussian_clusters_with_means
from ._data import load_dataset as load_dataset
from ._data import mnist_default as mnist_default
from ._data import preprocess as preprocess
from ._data import read_cifar10_python as read_cifar10_python
from ._data import read_csv_digits as read_csv_digits
from ._data import read_mnist_idx as read_mnist_idx
from ._data import read_npz_images as read_npz_images
from ._data import xor_clusters as xor_clusters
from ._dataset import Dataset as Dataset
from ._flow import FlowConfig as FlowConfig
from ._flow import gradient_flow as gradient_flow
from ._flow import vector_field as vector_field
from ._imp import IMPConfig as IMPConfig
from ._imp import imp as imp
from ._network import Model as Model
from ._network import Params as Params
from ._network import accuracy as accuracy
from ._network import closed_form_gradient as closed_form_gradient
from ._network import gating_pattern as gating_pattern
from ._network import init_params as init_params
from ._network import linearised as linearised
from ._network import logits as logits
from ._network import loss as loss
from ._network import preactivations as preactivations
from ._network import residuals as residuals
from ._observables import Observables as Observables
from ._observables import TrainingData as TrainingData
from ._observables import balance_drift as balance_drift
from ._observables import error_vectors as error_vectors
from ._observables import observe as observe
from ._observables import small_init_unlocking_rate as small_init_unlocking_rate
from ._observables import target_directions as target_directions
from ._observables import training_data as training_data
from ._runs import Run as Run
from ._runs import load_run as load_run
from ._sgd import SGDConfig as SGDConfig
from ._sgd import flow_time as flow_time
from ._sgd import train_gd as train_gd
from ._sgd import train_sgd as train_sgd
from ._sweep import sweep as sweep
from ._tickets import neuron_scores as neuron_scores
from ._tickets import spearman_test as spearman_test
from ._trajectory import Trajectory as Trajectory
from ._trajectory import TrajectoryError as TrajectoryError
from ._trajectory import status_message as status_message

__version__ = "0.1.0"

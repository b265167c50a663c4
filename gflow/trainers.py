"""Small-learning-rate GD/SGD with optax, and the chunked exact reformulation for seed sweeps
(docs/theory.md §1)."""

from ._chunked import BASES as BASES
from ._chunked import OBSERVATION_MODES as OBSERVATION_MODES
from ._chunked import NeuronNorms as NeuronNorms
from ._chunked import check_chunked_config as check_chunked_config
from ._chunked import chunk_batch_indices as chunk_batch_indices
from ._chunked import chunk_coefficients as chunk_coefficients
from ._chunked import epoch_permutations as epoch_permutations
from ._chunked import resolve_basis as resolve_basis
from ._chunked import train_sgd_chunked as train_sgd_chunked
from ._chunked import train_sgd_chunked_seeds as train_sgd_chunked_seeds
from ._chunked import train_sgd_seeds_shared_order as train_sgd_seeds_shared_order
from ._sgd import SGDConfig as SGDConfig
from ._sgd import check_hyperparameters as check_hyperparameters
from ._sgd import flow_time as flow_time
from ._sgd import train_gd as train_gd
from ._sgd import train_sgd as train_sgd

"""Datasets: the embedded MNIST digits, readers of standard formats, synthetic mixtures and the
preprocessing presets."""

from ._data import CIFAR10_CLASSES as CIFAR10_CLASSES
from ._data import DATASET_KINDS as DATASET_KINDS
from ._data import LUMA_WEIGHTS as LUMA_WEIGHTS
from ._data import PREPROCESS_MODES as PREPROCESS_MODES
from ._data import cifar_binary as cifar_binary
from ._data import cifar_luma as cifar_luma
from ._data import csv_digits as csv_digits
from ._data import dataset_from_options as dataset_from_options
from ._data import gaussian_clusters as gaussian_clusters
from ._data import gaussian_clusters_with_means as gaussian_clusters_with_means
from ._data import load_dataset as load_dataset
from ._data import mnist_default as mnist_default
from ._data import mnist_idx as mnist_idx
from ._data import npz_dataset as npz_dataset
from ._data import parse_classes as parse_classes
from ._data import preprocess as preprocess
from ._data import read_cifar10_python as read_cifar10_python
from ._data import read_csv_digits as read_csv_digits
from ._data import read_embedded_mnist5k as read_embedded_mnist5k
from ._data import read_mnist_idx as read_mnist_idx
from ._data import read_npz_images as read_npz_images
from ._data import xor_clusters as xor_clusters
from ._dataset import Dataset as Dataset
from ._validation import bounded_real as bounded_real
from ._validation import check_sample_counts as check_sample_counts
from ._validation import is_int as is_int
from ._validation import non_negative_int as non_negative_int
from ._validation import optional_positive_int as optional_positive_int
from ._validation import positive_int as positive_int
from ._validation import positive_real as positive_real
from ._validation import real as real

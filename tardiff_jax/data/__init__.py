"""Data layer: the dataset contract and its validator, loaders, stratified splits, normalisers
fitted on train, the embedded ICU simulator and the data stage `prepare_data`."""

from tardiff_jax.data.dataset import DataError, Dataset, Splits, check_series
from tardiff_jax.data.loaders import load_dataset, save_dataset
from tardiff_jax.data.normalizers import KINDS as NORMALIZER_KINDS
from tardiff_jax.data.normalizers import (
    Normalizer,
    interpolate_missing,
    make_normalizer,
    normalize_dataset,
    normalizer_from_dict,
)
from tardiff_jax.data.prepare import (
    DataConfig,
    PreparedData,
    SimulatorConfig,
    check_labels,
    prepare_data,
    target_class,
)
from tardiff_jax.data.simulator import (
    CHANNEL_NAMES,
    CHANNEL_UNITS,
    SUBTYPE_NAMES,
    Simulation,
    simulate_icu,
)
from tardiff_jax.data.splits import split_guidance, stratified_split, stratified_split_indices

__all__ = [
    "CHANNEL_NAMES", "CHANNEL_UNITS", "DataConfig", "DataError", "Dataset", "NORMALIZER_KINDS",
    "Normalizer", "PreparedData", "SUBTYPE_NAMES", "Simulation", "SimulatorConfig", "Splits",
    "check_labels", "check_series", "interpolate_missing", "load_dataset", "make_normalizer",
    "normalize_dataset", "normalizer_from_dict", "prepare_data", "save_dataset", "simulate_icu",
    "split_guidance", "stratified_split", "stratified_split_indices", "target_class",
]

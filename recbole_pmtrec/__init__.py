"""recbole_pmtrec: personalized multi-task training (PMTRec) and multi-task baselines for RecBole 1.2.1."""

from recbole_pmtrec import compat

compat.apply()

from recbole_pmtrec.config import Config  # noqa: E402
from recbole_pmtrec.quick_start import load_data_and_model, objective_function, run_recbole_pmtrec  # noqa: E402
from recbole_pmtrec.utils import create_dataset, data_preparation, get_model, get_trainer  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "Config",
    "create_dataset",
    "data_preparation",
    "get_model",
    "get_trainer",
    "load_data_and_model",
    "objective_function",
    "run_recbole_pmtrec",
]

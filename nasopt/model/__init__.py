"""Networks of the search space: their description, blocks, the ResCBAM-3D network, the A-Softmax
head and loss. Nothing here imports Optuna or the study configuration."""

from nasopt.model.architecture import PAPER_DEFAULT, Architecture
from nasopt.model.head import AngleLinear, AngularMarginLoss
from nasopt.model.network import ResCBAM3D, build_network, count_flops, count_params

__all__ = [
    "PAPER_DEFAULT",
    "AngleLinear",
    "AngularMarginLoss",
    "Architecture",
    "ResCBAM3D",
    "build_network",
    "count_flops",
    "count_params",
]

"""Networks of the search space: blocks, the ResCBAM-3D network, the A-Softmax head and loss."""

from nasopt.model.head import AngleLinear, AngularMarginLoss
from nasopt.model.network import ResCBAM3D, build_network, count_params

__all__ = ["AngleLinear", "AngularMarginLoss", "ResCBAM3D", "build_network", "count_params"]

"""Deployment: the optimized inference graph (BN and shuffles folded) and verified export."""

from shufflenet.deploy.fold import fold_batchnorm, fold_conv_bn
from shufflenet.deploy.optimize import eager_timer, optimize

__all__ = ["eager_timer", "fold_batchnorm", "fold_conv_bn", "optimize"]

"""Deployment: the optimized inference graph (BN and shuffles folded) and verified export."""

from shufflenet.deploy.fold import fold_batchnorm, fold_conv_bn
from shufflenet.deploy.optimize import optimize
from shufflenet.deploy.timing import eager_timer

__all__ = ["eager_timer", "fold_batchnorm", "fold_conv_bn", "optimize"]

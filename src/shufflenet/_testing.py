"""Weights that make equality checks meaningful, shared by the tests and the export benchmark."""

from __future__ import annotations

import torch


def randomize_batchnorm(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Give every BN non-trivial statistics and affine parameters (in place), so that eval-mode comparisons
    and BN folding are tested away from the identity; returns ``model``."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model

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


@torch.no_grad()
def trained_looking(
    model: torch.nn.Module,
    input_size: tuple[int, int],
    seed: int = 1,
    images: torch.Tensor | None = None,
) -> torch.nn.Module:
    """Random BN affine parameters, running statistics measured on a random batch (as a trained net's
    normalise its activations) and a classifier scaled for O(1) logits; returns ``model`` in eval mode.
    ``images``: real inputs the net will also be run on, measured with the random batch, as a trained
    net's statistics are measured on its data.

    Deep residual nets at initialisation otherwise reach logits in the hundreds, where an absolute
    tolerance of 1e-4 asks for more than float32 can give; so do real images whose statistics the BN
    layers never saw (Fashion-MNIST at 224 x 224: logits up to ~250 when measured on noise alone)."""
    randomize_batchnorm(model, seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: one batch sets the statistics exactly
    generator = torch.Generator().manual_seed(seed)
    batch = torch.randn(8, model.in_chans, *input_size, generator=generator)
    if images is not None:
        batch = torch.cat([batch, images.to(batch.dtype)])
    model.train()(batch)
    for norm in norms:
        norm.momentum = 0.1
    classifier = model.get_classifier()
    classifier.weight.normal_(0, classifier.in_features**-0.5, generator=generator)
    return model.eval()

"""Batch-norm folding: an inference-time BN after a convolution is an affine map per output channel, so
it merges into the convolution's weights and bias (no extra op, identical outputs up to rounding)."""

from __future__ import annotations

import itertools

import torch
from torch import nn


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution equal to ``bn(conv(x))`` with ``bn`` in eval mode (its running statistics)."""
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BN has {bn.num_features} channels but the conv outputs {conv.out_channels}")
    scale = 1 / torch.sqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.detach()
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(scale)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    ).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_((bias - bn.running_mean) * scale + shift)
    return fused


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold, in place, every BN that directly follows a Conv2d inside an ``nn.Sequential`` (how
    ConvBNAct, the MobileNet units and the ShuffleNet V2 branches are built); returns ``module``."""
    for child in list(module.children()):
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for first, second in itertools.pairwise(names):
            conv, bn = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[first] = fold_conv_bn(conv, bn)
                module._modules[second] = nn.Identity()
        # Drop the emptied slots; Sequential.forward walks whatever entries remain.
        for name in [name for name, child in module._modules.items() if isinstance(child, nn.Identity)]:
            del module._modules[name]
    return module

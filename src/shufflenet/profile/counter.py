"""Per-layer multiply-adds, parameters and memory access cost (MAC) of a forward pass.

Counting is done on the aten operators the forward pass really runs (a TorchDispatchMode), attributed to
the innermost module that issued them, so nothing the model does is missed or counted by hand:
- FLOPs follow the papers (Zhang et al. 2018, Table 1 note, Howard et al. 2017, section 3): multiply-adds of
  convolutions and matrix products only; BN, activations, pooling, shuffle, add and concat count 0.
- MAC follows Ma et al. 2018, section 2: every operator's feature-map reads + writes + weights; for a 1x1
  conv that is ``hw(c1 + c2) + c1 c2``. Views (reshape, transpose, split) move no memory and count 0.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
# Ops that only relabel memory without moving it, beyond those torch marks as views.
_FREE_OPS = {aten._unsafe_view.default, aten.detach.default, aten.lift_fresh.default, aten.alias.default}


def _multiply_adds(func, args, out) -> int:
    """Multiply-adds of a convolution or matrix product; 0 for every other operator."""
    packet = func.overloadpacket
    if packet is aten.convolution:
        weight = args[1]
        return out.numel() * weight.shape[1] * weight[0, 0].numel()
    if packet is aten.addmm:
        mat1, mat2 = args[1], args[2]
        return mat1.shape[0] * mat1.shape[1] * mat2.shape[1]
    if packet is aten.mm:
        return args[0].shape[0] * args[0].shape[1] * args[1].shape[1]
    if packet is aten.bmm:
        return args[0].shape[0] * args[0].shape[1] * args[0].shape[2] * args[1].shape[2]
    return 0


def _tensors(tree) -> list[torch.Tensor]:
    return [leaf for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


@dataclass
class LayerStats:
    """One row: a leaf module (``kind`` is its class) or an operator a composite module ran itself
    (``kind`` is the aten op, e.g. ``cat`` or ``add``)."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    mflops: float = 0.0
    params: int = 0
    mac: int = 0  # elements read and written
    mac_bytes: int = 0


@dataclass
class ModelProfile:
    """Totals and per-layer rows of one forward pass at batch 1."""

    model: str
    input_size: tuple[int, int]
    layers: list[LayerStats] = field(default_factory=list)
    params: int = 0

    @property
    def mflops(self) -> float:
        return sum(layer.mflops for layer in self.layers)

    @property
    def mac(self) -> int:
        return sum(layer.mac for layer in self.layers)

    @property
    def mac_bytes(self) -> int:
        return sum(layer.mac_bytes for layer in self.layers)

    def totals(self) -> dict[str, float | int | str]:
        """The headline figures: MFLOPs, params, MAC (elements and bytes)."""
        return {
            "model": self.model,
            "input_size": f"{self.input_size[0]}x{self.input_size[1]}",
            "mflops": round(self.mflops, 3),
            "params": self.params,
            "mac": self.mac,
            "mac_mbytes": round(self.mac_bytes / 1e6, 3),
        }

    def to_json(self, per_layer: bool = False) -> str:
        document: dict = dict(self.totals())
        if per_layer:
            document["layers"] = [asdict(layer) for layer in self.layers]
        return json.dumps(document, indent=2)

    def to_csv(self, per_layer: bool = False) -> str:
        buffer = io.StringIO()
        if per_layer:
            writer = csv.writer(buffer)
            writer.writerow(["name", "kind", "output_shape", "mflops", "params", "mac", "mac_bytes"])
            for layer in self.layers:
                shape = "x".join(map(str, layer.output_shape))
                writer.writerow(
                    [
                        layer.name,
                        layer.kind,
                        shape,
                        f"{layer.mflops:.6f}",
                        layer.params,
                        layer.mac,
                        layer.mac_bytes,
                    ]
                )
        else:
            totals = self.totals()
            writer = csv.DictWriter(buffer, fieldnames=list(totals))
            writer.writeheader()
            writer.writerow(totals)
        return buffer.getvalue()


class _Recorder(TorchDispatchMode):
    """Attributes each aten op of a forward pass to the innermost running module."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.stack: list[tuple[str, nn.Module]] = []
        self.rows: dict[tuple[str, str], LayerStats] = {}
        self.param_counted: set[str] = set()
        self.handles = []
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._enter(name or "<model>")))
            self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, name: str):
        def hook(module, args):
            self.stack.append((name, module))

        return hook

    def _leave(self, module, args, output):
        self.stack.pop()

    def remove_hooks(self) -> None:
        for handle in self.handles:
            handle.remove()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view or func in _FREE_OPS or not self.stack:
            return out
        name, module = self.stack[-1]
        is_leaf = next(module.children(), None) is None
        kind = type(module).__name__ if is_leaf else func.overloadpacket.__name__
        outputs = _tensors(out)
        row = self.rows.get((name, kind))
        if row is None:
            row = self.rows[(name, kind)] = LayerStats(name=name, kind=kind, output_shape=())
            if is_leaf and name not in self.param_counted:
                self.param_counted.add(name)
                row.params = sum(p.numel() for p in module.parameters(recurse=False))
        if outputs and outputs[0].numel():
            row.output_shape = tuple(outputs[0].shape)  # the module's last op gives its output
        row.mflops += _multiply_adds(func, args, out) / 1e6
        touched = _tensors((args, kwargs)) + outputs
        row.mac += sum(t.numel() for t in touched)
        row.mac_bytes += sum(t.numel() * t.element_size() for t in touched)
        return out


def profile(
    model: nn.Module,
    input_size: tuple[int, int] = (224, 224),
    *,
    in_chans: int | None = None,
    name: str | None = None,
) -> ModelProfile:
    """Count MFLOPs (multiply-adds), params (BN affine included, buffers not) and MAC of one forward pass
    of ``model`` on a ``1 x C x H x W`` input, per layer and in total (Ma et al. 2018, section 2).

    The total equals ``torch.utils.flop_counter.FlopCounterMode``'s count / 2. The model runs in eval
    mode without gradients and is put back in the mode it was in.
    """
    channels = in_chans if in_chans is not None else getattr(model, "in_chans", 3)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    x = torch.randn(1, channels, *input_size, device=device, dtype=dtype)
    was_training = model.training
    recorder = _Recorder(model)
    try:
        model.eval()
        with torch.no_grad(), recorder:
            model(x)
    finally:
        recorder.remove_hooks()
        model.train(was_training)
    return ModelProfile(
        model=name or type(model).__name__,
        input_size=tuple(input_size),
        layers=list(recorder.rows.values()),
        params=sum(p.numel() for p in model.parameters()),
    )

"""Our own inference engine for ShuffleNet V1 and V2 (batch-1 CPU latency): the whole network as one C call
on NHWC float32 buffers (``csrc/engine.c``, compiled on first use for AVX-512 or AVX2 + FMA, whichever
is the widest the CPU has).

Why it is faster than running the deploy graph in ONNX Runtime or OpenVINO: in those runtimes every channel
shuffle, split and concatenation is a data-movement op, and an op that their blocked (NCHWc) kernels do not
support costs two layout reorders around it. Here those ops are addressing, decided once when the plan is
built (Zhang et al. 2018, section 3.1; Ma et al. 2018, section 3):

- a pointwise (1x1) conv reads its input channels through an index table, so a channel shuffle, or the
  split of V2's unit, is the order in which the next conv reads, and costs nothing;
- every conv writes its output at a channel offset of a shared buffer, so V2's and V1's concatenations are
  where the branches write; only V2's kept half is copied (a few contiguous runs per pixel);
- BN is folded into the conv before it; the residual add and ReLU are the pointwise conv's epilogue.

The 1x1 convs run as a register-tiled GEMM (AVX2: 6 pixels x 16 channels, or 4 x 20/24; AVX-512: 12 x 32
or 8 x 40/48); the depthwise convs and pools are vectorised over channels. ``build_engine(model, (H, W))``
plans a network for one input size.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shufflenet._system import cache_dir, cpu_info
from shufflenet.blocks import ShuffleV1Unit, ShuffleV2Unit
from shufflenet.deploy.channels import is_depthwise, shuffle_source
from shufflenet.deploy.errors import RuntimeUnavailable
from shufflenet.deploy.fold import fold_conv_bn
from shufflenet.models import ShuffleNetV1, ShuffleNetV2

SOURCE = Path(__file__).with_name("csrc") / "engine.c"
# Instruction sets the engine compiles for, widest first: (compiler flags, CPU flags they need).
ISAS = {
    "avx512": (("-mavx512f", "-mavx512vl", "-mavx2", "-mfma"), {"avx512f", "avx512vl", "avx2", "fma"}),
    "avx2": (("-mavx2", "-mfma"), {"avx2", "fma"}),
}
COMPILE_FLAGS = ("-O3", "-shared", "-fPIC", "-std=gnu11")
FIELDS = 24  # int64 fields per operation row, as in engine.c
OP_PAD_INPUT, OP_POINTWISE, OP_DEPTHWISE, OP_MAXPOOL, OP_AVGPOOL, OP_COPY, OP_GLOBAL_AVG = range(7)


class EngineUnavailable(RuntimeUnavailable):
    """The engine cannot run here (CPU, compiler) or cannot run this model; the message says which."""


def _cpu_flags() -> set[str]:
    return set(cpu_info().get("flags", "").split())


def engine_isa() -> str:
    """The instruction set the engine is built for here: ``$SHUFFLENET_ENGINE_ISA`` (``avx512`` or
    ``avx2``) if set, else the widest this CPU supports. Raises :class:`EngineUnavailable` where none
    runs."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise EngineUnavailable("the shufflenet engine needs an x86-64 CPU with AVX2 and FMA")
    flags = _cpu_flags()
    if not flags:
        raise EngineUnavailable("could not confirm AVX2 and FMA support: /proc/cpuinfo (Linux) is unreadable")
    chosen = os.environ.get("SHUFFLENET_ENGINE_ISA")
    if chosen is not None and chosen not in ISAS:
        raise EngineUnavailable(f"SHUFFLENET_ENGINE_ISA={chosen!r}: use one of {', '.join(ISAS)} or unset it")
    if chosen is not None:
        missing = " ".join(sorted(ISAS[chosen][1] - flags))
        if missing:
            raise EngineUnavailable(f"SHUFFLENET_ENGINE_ISA={chosen}: this CPU lacks {missing}; unset it")
        return chosen
    for isa, (_, needs) in ISAS.items():
        if needs <= flags:
            return isa
    raise EngineUnavailable("the shufflenet engine needs an x86-64 CPU with AVX2 and FMA")


_LIBRARIES: dict[str, ctypes.CDLL] = {}


def load_library(isa: str | None = None) -> ctypes.CDLL:
    """The engine compiled for ``isa`` (default :func:`engine_isa`), built on first use into
    ``$SHUFFLENET_CACHE`` (default ~/.cache/shufflenet) and reused while the source is unchanged. Raises
    :class:`EngineUnavailable` without a suitable x86-64 CPU or a C compiler (``$CC``, default ``cc``)."""
    isa = isa or engine_isa()
    if isa in _LIBRARIES:
        return _LIBRARIES[isa]
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise EngineUnavailable("the shufflenet engine is compiled on first use; install a C compiler (cc)")
    flags = (*COMPILE_FLAGS, *ISAS[isa][0])
    identity = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = SOURCE.read_bytes() + " ".join((compiler, identity, *flags)).encode()
    cache = cache_dir()
    target = cache / f"engine-{isa}-{hashlib.sha256(key).hexdigest()[:16]}.so"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        # Compile beside the target, then rename: a concurrent or interrupted build never leaves half a file.
        with tempfile.TemporaryDirectory(dir=cache) as folder:
            built = Path(folder) / target.name
            result = subprocess.run(
                [compiler, *flags, str(SOURCE), "-o", str(built)], capture_output=True, text=True
            )
            if result.returncode != 0:
                raise EngineUnavailable(f"compiling {SOURCE.name} failed: {result.stderr.strip()[:500]}")
            os.replace(built, target)
        for stale in cache.glob(f"engine-{isa}-*.so"):  # builds of older sources or other compilers
            if stale != target:
                stale.unlink(missing_ok=True)
    library = ctypes.CDLL(str(target))
    library.shufflenet_engine_run.restype = None
    library.shufflenet_engine_run.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 5
    library.shufflenet_engine_lanes.restype = ctypes.c_int
    _LIBRARIES[isa] = library
    return library


def _round_up(value: int, multiple: int = 8) -> int:
    return -(-value // multiple) * multiple


def _aligned_floats(size: int) -> np.ndarray:
    """``size`` float32 zeros starting on a 64-byte cache line. NumPy's large arrays start 16 bytes past a
    page, which splits every other 32-byte vector access across two cache lines."""
    raw = np.zeros(size + 16, np.float32)
    start = (-raw.ctypes.data % 64) // 4
    return raw[start : start + size]


@dataclass
class _Feature:
    """A feature map in an engine buffer: ``positions[c]`` is the offset of logical channel ``c`` within a
    pixel's ``stride`` floats."""

    buffer: int
    height: int
    width: int
    stride: int
    positions: list[int]

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def channels(self) -> int:
        return len(self.positions)


def _panels(channels: int, lanes: int) -> list[tuple[int, int]]:
    """(start, stop) of each weight panel, as engine.c's panel_width and panel_stride cut ``channels``
    output channels for vectors of ``lanes`` floats: two vectors at a time, except that 2.5 or 3 vectors'
    worth remaining make one panel; a last narrower panel is padded to a half vector, at least 16."""
    panels, start = [], 0
    while start < channels:
        remaining = channels - start
        wide = remaining in (5 * lanes // 2, 3 * lanes) or remaining < 2 * lanes
        width = remaining if wide else 2 * lanes
        panels.append((start, start + max(_round_up(width, lanes // 2), 16)))
        start += width
    return panels


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) as NumPy float32, BN folded in."""
    if bn is not None:
        conv = fold_conv_bn(conv, bn)
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    return conv.weight.detach().float().numpy(), bias.detach().float().numpy()


def _conv_bn_pairs(sequence: nn.Sequential) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None, bool]]:
    """(conv, following BN or None, followed by ReLU) for each conv of a Conv/BN/ReLU sequence."""
    modules = list(sequence)
    pairs = []
    for index, module in enumerate(modules):
        if not isinstance(module, nn.Conv2d):
            continue
        rest = modules[index + 1 :]
        bn = rest[0] if rest and isinstance(rest[0], nn.BatchNorm2d) else None
        after = rest[1:] if bn is not None else rest
        pairs.append((module, bn, bool(after) and isinstance(after[0], nn.ReLU)))
    for module in modules:
        if not isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Identity)):
            raise EngineUnavailable(f"the engine does not run {type(module).__name__} layers")
    return pairs


class _Planner:
    """Collects operations, buffers and the two arenas of a plan, for vectors of ``lanes`` floats."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        self.ops: list[list[int]] = []
        self.buffer_sizes: dict[str, int] = {}
        self.buffer_ids: dict[str, int] = {}
        self.floats: list[np.ndarray] = []
        self.float_size = 0
        self.ints: list[np.ndarray] = []
        self.int_size = 0

    def buffer(self, role: str, floats: int) -> int:
        """The buffer for ``role`` (grown to ``floats`` + slack); roles are reused across units."""
        if role not in self.buffer_ids:
            self.buffer_ids[role] = len(self.buffer_ids)
        self.buffer_sizes[role] = max(self.buffer_sizes.get(role, 0), floats + 16)
        return self.buffer_ids[role]

    def add_floats(self, values: np.ndarray) -> int:
        offset = self.float_size
        flat = np.ascontiguousarray(values, dtype=np.float32).ravel()
        self.floats.append(flat)
        # Keep every block 64-byte aligned (the Engine puts the arena on a cache line) and readable 16
        # floats past its end (whole-vector loads).
        padded = _round_up(flat.size + 16, 16)
        self.floats.append(np.zeros(padded - flat.size, np.float32))
        self.float_size += padded
        return offset

    def add_ints(self, values: Sequence[int] | np.ndarray) -> int:
        offset = self.int_size
        flat = np.asarray(values, dtype=np.int32).ravel()
        self.ints.append(flat)
        self.int_size += flat.size
        return offset

    def op(self, *fields: int) -> None:
        self.ops.append(list(fields) + [0] * (FIELDS - len(fields)))

    # -- layers -------------------------------------------------------------------------------------

    def pointwise(
        self,
        source: _Feature,
        weight: np.ndarray,
        bias: np.ndarray,
        *,
        groups: int,
        relu: bool,
        target: tuple[int, int, int] | None = None,
        role: str = "",
        residual: _Feature | None = None,
        lines: tuple[Sequence[int], int] | None = None,
        index: Sequence[int] | None = None,
        size: tuple[int, int] | None = None,
    ) -> _Feature:
        """A (grouped) 1x1 conv reading ``source``'s logical channels wherever they are; the output goes to
        ``target`` = (buffer, stride, channel offset) or a fresh ``role`` buffer. ``lines`` = (start offset
        of each line of output pixels, input step between neighbours), ``index`` and ``size`` override the
        addressing (the stem conv reads its 3x3 windows this way)."""
        out_channels = weight.shape[0]
        height, width = size if size is not None else (source.height, source.width)
        pixels = height * width
        k_per_group = weight.shape[1] * weight.shape[2] * weight.shape[3]
        n_per_group = out_channels // groups
        panels = _panels(n_per_group, self.lanes)
        n_pad = panels[-1][1]
        dense = np.zeros((groups, k_per_group, n_pad), np.float32)
        packed_bias = np.zeros((groups, n_pad), np.float32)
        for group in range(groups):
            rows = slice(group * n_per_group, (group + 1) * n_per_group)
            dense[group, :, :n_per_group] = weight[rows].reshape(n_per_group, k_per_group).T
            packed_bias[group, :n_per_group] = bias[rows]
        # Per group, panels of output channels, each K rows of the panel's width (the C kernel's order).
        packed = np.concatenate(
            [dense[:, :, start:stop].reshape(groups, -1) for start, stop in panels], axis=1
        )
        if target is None:
            stride = _round_up(out_channels)
            target = (self.buffer(role, pixels * stride), stride, 0)
        buffer, stride, offset = target
        if index is None:
            index = source.positions
        if len(index) != groups * k_per_group:
            raise EngineUnavailable(f"a conv reads {groups * k_per_group} channels of {len(index)}")
        line_starts, step = lines if lines is not None else ([0], source.stride)
        self.op(
            OP_POINTWISE,
            source.buffer,
            self.add_ints(line_starts),
            len(line_starts),
            pixels // len(line_starts),
            step,
            self.add_ints(index),
            groups,
            k_per_group,
            n_per_group,
            n_pad,
            self.add_floats(packed),
            self.add_floats(packed_bias),
            buffer,
            stride,
            offset,
            -1 if residual is None else residual.buffer,
            0 if residual is None else residual.stride,
            0,
            int(relu),
        )
        return _Feature(buffer, height, width, stride, list(range(offset, offset + out_channels)))

    def depthwise(
        self, source: _Feature, weight: np.ndarray, bias: np.ndarray, *, stride: int, relu: bool, role: str
    ) -> _Feature:
        """A 3x3 depthwise conv over ``source``'s physical channels (filters placed where each logical
        channel lives, so any channel order works); the output keeps the order."""
        channels = source.channels
        if sorted(source.positions) != list(range(channels)):
            raise EngineUnavailable("a depthwise conv needs its input channels packed at the pixel's start")
        c_pad = _round_up(channels)
        taps = np.zeros((9, c_pad), np.float32)
        shifted_bias = np.zeros(c_pad, np.float32)
        taps[:, source.positions] = weight.reshape(channels, 9).T
        shifted_bias[source.positions] = bias
        height, width = (source.height - 1) // stride + 1, (source.width - 1) // stride + 1
        out_stride = c_pad
        buffer = self.buffer(role, height * width * out_stride)
        self.op(
            OP_DEPTHWISE,
            source.buffer,
            source.height,
            source.width,
            source.stride,
            c_pad,  # whole 8-channel blocks (see engine.c)
            stride,
            self.add_floats(taps),
            self.add_floats(shifted_bias),
            buffer,
            height,
            width,
            out_stride,
            0,
            int(relu),
        )
        return _Feature(buffer, height, width, out_stride, list(source.positions))

    def pool(self, source: _Feature, *, average: bool, target: tuple[int, int, int]) -> _Feature:
        """3x3 stride-2 pooling (padding 1) over physical channels into ``target`` = (buffer, stride,
        channel offset)."""
        channels = source.channels
        if sorted(source.positions) != list(range(channels)):
            raise EngineUnavailable("pooling needs its input channels packed at the pixel's start")
        height, width = (source.height - 1) // 2 + 1, (source.width - 1) // 2 + 1
        buffer, stride, offset = target
        self.op(
            OP_AVGPOOL if average else OP_MAXPOOL,
            source.buffer,
            source.height,
            source.width,
            source.stride,
            channels,
            buffer,
            height,
            width,
            stride,
            offset,
        )
        return _Feature(buffer, height, width, stride, [offset + p for p in source.positions])

    def copy(self, source: _Feature, channels: Sequence[int], target: tuple[int, int, int]) -> list[int]:
        """Copy logical ``channels`` of ``source`` into ``target`` = (buffer, stride, channel offset), in the
        order they lie in ``source`` (so the copy is a few contiguous runs per pixel); returns where each
        of ``channels`` went."""
        buffer, stride, offset = target
        by_position = sorted(range(len(channels)), key=lambda j: source.positions[channels[j]])
        placed = [0] * len(channels)
        runs: list[list[int]] = []
        for rank, j in enumerate(by_position):
            source_offset, target_offset = source.positions[channels[j]], offset + rank
            placed[j] = target_offset
            if runs and runs[-1][0] + runs[-1][2] == source_offset:
                runs[-1][2] += 1
            else:
                runs.append([source_offset, target_offset, 1])
        runs_offset = self.add_ints(runs)
        self.op(OP_COPY, source.buffer, source.stride, source.pixels, buffer, stride, runs_offset, len(runs))
        return placed


class Engine:
    """A planned network: call it with an NCHW float32 batch (any batch size, the planned H x W) to get
    the logits as NumPy."""

    def __init__(
        self,
        library: ctypes.CDLL,
        planner: _Planner,
        input_buffer: int,
        output: _Feature,
        input_shape: tuple[int, ...],
    ):
        self._library = library
        self.input_shape = input_shape
        self._ops = np.ascontiguousarray(np.array(planner.ops, dtype=np.int64))
        self._floats = _aligned_floats(max(planner.float_size, 8))
        if planner.floats:
            np.concatenate(planner.floats, out=self._floats)
        self._ints = np.concatenate(planner.ints) if planner.ints else np.zeros(1, np.int32)
        order = sorted(planner.buffer_ids, key=planner.buffer_ids.get)
        self._buffers = [_aligned_floats(planner.buffer_sizes[role]) for role in order]
        self._pointers = (ctypes.c_void_p * len(self._buffers))(*[b.ctypes.data for b in self._buffers])
        self._input_buffer = input_buffer
        self._output = output
        self.operations = len(planner.ops)
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, None)

    def profile(self, batch: np.ndarray, repeats: int = 20) -> list[tuple[str, float]]:
        """(operation, mean seconds) for each planned operation over ``repeats`` runs of ``batch``."""
        seconds = np.zeros(len(self._ops), np.float64)
        for _ in range(repeats):
            self._run(batch, seconds)
        return [(self.describe(i), total / repeats) for i, total in enumerate(seconds)]

    def describe(self, index: int) -> str:
        """A short description of planned operation ``index``."""
        f = self._ops[index]
        if f[0] == OP_POINTWISE:
            return f"pointwise {f[3] * f[4]} px, {f[7]} x ({f[8]} -> {f[9]})"
        if f[0] == OP_DEPTHWISE:
            return f"depthwise {f[2]}x{f[3]} px, {f[5]} ch, stride {f[6]}"
        names = {OP_PAD_INPUT: "pad input", OP_MAXPOOL: "max pool", OP_AVGPOOL: "average pool"}
        names.update({OP_COPY: "copy kept half", OP_GLOBAL_AVG: "global average"})
        return names[int(f[0])]

    def _run(self, batch: np.ndarray, seconds: np.ndarray | None) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != self.input_shape:
            raise ValueError(f"the engine was planned for N x {self.input_shape} inputs, got {batch.shape}")
        logits = np.empty((batch.shape[0], self._output.channels), np.float32)
        result = self._buffers[self._output.buffer]
        timings = None if seconds is None else seconds.ctypes.data
        with self._lock:  # the buffers are shared by every call
            for index in range(batch.shape[0]):
                self._pointers[self._input_buffer] = batch[index].ctypes.data
                self._library.shufflenet_engine_run(
                    len(self._ops),
                    self._ops.ctypes.data,
                    self._pointers,
                    self._floats.ctypes.data,
                    self._ints.ctypes.data,
                    timings,
                )
                logits[index] = result[self._output.positions]
        return logits


def _stem(planner: _Planner, model: nn.Module, channels: int, height: int, width: int) -> _Feature:
    """conv1 (3x3, BN, ReLU) as a GEMM over the zero-bordered image, then the max pool if the model has
    one."""
    conv, bn, _ = _conv_bn_pairs(model.conv1)[0]
    weight, bias = _folded(conv, bn)
    stride = conv.stride[0]
    padded = planner.buffer("padded", channels * (height + 2) * (width + 2))
    planner.op(OP_PAD_INPUT, planner.buffer("input", 0), channels, height, width, padded)
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    row = width + 2
    line_starts = [stride * oy * row for oy in range(out_h)]
    c, ky, kx = np.meshgrid(np.arange(channels), np.arange(3), np.arange(3), indexing="ij")
    index = (c * (height + 2) * row + ky * row + kx).ravel()
    source = _Feature(padded, height + 2, width + 2, 1, [])
    x = planner.pointwise(
        source,
        weight,
        bias,
        groups=1,
        relu=True,
        role="stem",
        lines=(line_starts, stride),
        index=index,
        size=(out_h, out_w),
    )
    if isinstance(model.maxpool, nn.MaxPool2d):
        h, w = (out_h - 1) // 2 + 1, (out_w - 1) // 2 + 1
        main = planner.buffer("main0", h * w * x.channels)
        x = planner.pool(x, average=False, target=(main, x.channels, 0))
    return x


def _v1_unit(planner: _Planner, unit: ShuffleV1Unit, x: _Feature, parity: int) -> tuple[_Feature, int]:
    if not isinstance(unit.se, nn.Identity):
        raise EngineUnavailable("the engine does not run squeeze-excite units")
    w1, b1 = _folded(unit.pointwise1, unit.bn1)
    wd, bd = _folded(unit.depthwise, unit.bn2)
    w2, b2 = _folded(unit.pointwise2, unit.bn3)
    mid = planner.pointwise(x, w1, b1, groups=unit.pointwise1.groups, relu=True, role="mid0")
    shuffle_groups = getattr(unit.shuffle, "groups", 1)
    if shuffle_groups > 1:  # the shuffle is the order the depthwise conv and pointwise2 read in
        mid.positions = [mid.positions[s] for s in shuffle_source(mid.channels, shuffle_groups)]
    mid = planner.depthwise(mid, wd, bd, stride=unit.stride, relu=False, role="mid1")
    if unit.stride == 1:  # relu(x + branch), written over x
        target = (x.buffer, x.stride, 0)
        if x.positions != list(range(x.channels)):
            raise EngineUnavailable("a residual unit needs its input in channel order")
        groups = unit.pointwise2.groups
        return planner.pointwise(mid, w2, b2, groups=groups, relu=True, target=target, residual=x), parity
    channels = x.channels + w2.shape[0]
    parity ^= 1
    buffer = planner.buffer(f"main{parity}", mid.pixels * channels)
    shortcut = planner.pool(x, average=True, target=(buffer, channels, 0))
    branch = planner.pointwise(
        mid, w2, b2, groups=unit.pointwise2.groups, relu=True, target=(buffer, channels, x.channels)
    )
    return _Feature(buffer, mid.height, mid.width, channels, shortcut.positions + branch.positions), parity


def _branch(planner: _Planner, branch: nn.Sequential, x: _Feature, target: tuple[int, int, int]) -> _Feature:
    """A V2 branch (1x1/depthwise convs with folded BN): temporaries in the mid buffers, the last conv
    writing to ``target``."""
    pairs = _conv_bn_pairs(branch)
    for index, (conv, bn, relu) in enumerate(pairs):
        weight, bias = _folded(conv, bn)
        last = index == len(pairs) - 1
        role = f"mid{index % 2}"
        if is_depthwise(conv) and conv.kernel_size == (3, 3):
            x = planner.depthwise(x, weight, bias, stride=conv.stride[0], relu=relu, role=role)
            if last:
                raise EngineUnavailable("a branch ending in a depthwise conv")
        elif conv.kernel_size == (1, 1):
            x = planner.pointwise(
                x, weight, bias, groups=conv.groups, relu=relu, target=target if last else None, role=role
            )
        else:
            raise EngineUnavailable(f"the engine does not run {conv.kernel_size} convs inside units")
    return x


def _v2_unit(planner: _Planner, unit: ShuffleV2Unit, x: _Feature, parity: int) -> tuple[_Feature, int]:
    parity ^= 1
    if unit.stride == 1:
        half = x.channels // 2
        channels = x.channels
        height, width = x.height, x.width
        buffer = planner.buffer(f"main{parity}", x.pixels * channels)
        concatenated = planner.copy(x, range(half), (buffer, channels, 0))
        transformed = _Feature(x.buffer, height, width, x.stride, x.positions[half:])
        concatenated += _branch(planner, unit.branch2, transformed, (buffer, channels, half)).positions
    else:
        width1 = _conv_bn_pairs(unit.branch1)[-1][0].out_channels
        width2 = _conv_bn_pairs(unit.branch2)[-1][0].out_channels
        channels = width1 + width2
        height, width = (x.height - 1) // 2 + 1, (x.width - 1) // 2 + 1
        buffer = planner.buffer(f"main{parity}", height * width * channels)
        concatenated = _branch(planner, unit.branch1, x, (buffer, channels, 0)).positions
        concatenated += _branch(planner, unit.branch2, x, (buffer, channels, width1)).positions
    # The shuffle is where the next unit finds each channel: logical k is concatenated channel src[k].
    order = shuffle_source(channels, 2) if unit.shuffle else range(channels)
    return _Feature(buffer, height, width, channels, [concatenated[k] for k in order]), parity


def build_engine(model: nn.Module, input_size: tuple[int, int], *, isa: str | None = None) -> Engine:
    """Plan ``model`` (a ShuffleNet V1 or V2 in eval mode, 3x3 stem) for ``input_size`` = (H, W) inputs,
    run by the engine compiled for ``isa`` (default: the widest this CPU has, see :func:`engine_isa`).
    Raises :class:`EngineUnavailable` for other networks or layers the engine does not run, ValueError for
    a model in training mode or an input size the model refuses. The engine keeps its own copy of the
    weights: later changes to ``model`` need a new plan. One call runs at a time (a lock guards the
    shared buffers)."""
    if not isinstance(model, (ShuffleNetV1, ShuffleNetV2)):
        raise EngineUnavailable(f"the engine runs ShuffleNet V1 and V2, not {type(model).__name__}")
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Linear):
        raise EngineUnavailable("the engine needs a linear classifier (num_classes > 0)")
    if model.training:
        raise ValueError(
            "the engine folds BN from its running statistics, as in eval mode; call model.eval() first"
        )
    height, width = input_size
    model.check_input(torch.empty(1, model.in_chans, height, width))
    library = load_library(isa)
    planner = _Planner(library.shufflenet_engine_lanes())
    with torch.no_grad():
        x = _stem(planner, model, model.in_chans, height, width)
        parity = 0
        for piece in model.pieces[2:]:
            for unit in model.get_submodule(piece.name):
                if isinstance(unit, ShuffleV1Unit):
                    x, parity = _v1_unit(planner, unit, x, parity)
                elif isinstance(unit, ShuffleV2Unit):
                    x, parity = _v2_unit(planner, unit, x, parity)
                else:
                    raise EngineUnavailable(f"the engine does not run {type(unit).__name__}")
        if model.head_conv_name is not None:
            conv, bn, relu = _conv_bn_pairs(model.get_submodule(model.head_conv_name))[0]
            weight, bias = _folded(conv, bn)
            x = planner.pointwise(x, weight, bias, groups=1, relu=relu, role="head")
        pooled = planner.buffer("pooled", x.stride)
        planner.op(OP_GLOBAL_AVG, x.buffer, x.pixels, x.stride, x.stride, pooled)
        features = _Feature(pooled, 1, 1, x.stride, x.positions)
        weight = classifier.weight.detach().float().numpy()[:, :, None, None]
        bias = classifier.bias.detach().float().numpy()
        logits = planner.pointwise(features, weight, bias, groups=1, relu=False, role="logits")
    return Engine(library, planner, planner.buffer_ids["input"], logits, (model.in_chans, height, width))

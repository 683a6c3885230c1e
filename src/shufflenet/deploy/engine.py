"""Our own inference engine (batch-1 CPU latency) for every registered model: the whole network as one C
call on NHWC float32 buffers (``csrc/engine.c`` over the vector layer of ``csrc/vector.h``, compiled on
first use for AVX-512, AVX2 + FMA, NEON or plain C, the widest the CPU runs), on a persistent pool of
threads that split each operation.

Why it is faster than running the deploy graph in ONNX Runtime or OpenVINO: in those runtimes every channel
shuffle, split, concatenation and shift is a data-movement op, and an op that their blocked (NCHWc) kernels
do not support costs two layout reorders around it. Here those ops are addressing, decided once when the
plan is built (Zhang et al. 2018, section 3.1; Ma et al. 2018, section 3; Chen et al. 2019, Fig. 2):

- a pointwise (1x1) conv reads its input channels through an index table, so a channel shuffle, or the
  split of V2's unit, is the order in which the next conv reads, and costs nothing; a shift is the offset
  at which it reads each channel of a zero-bordered map;
- every conv writes its output at a channel offset of a shared buffer, so V2's and V1's concatenations are
  where the branches write; only V2's kept half is copied (a few contiguous runs per pixel);
- BN is folded into the conv before it; the residual add and ReLU/ReLU6 are the conv's epilogue.

The plan is made from the model's one lowering (:mod:`shufflenet.deploy.lower`), which says what to
compute; this module only says where each map lives (buffers handed out at a map's first write and taken
back after its last read) and packs the weights for the kernels. The plan's layout is defined once, in
``csrc/engine.h`` (:mod:`shufflenet.deploy.engine_abi`); a plan can be saved and run without Python
(``csrc/runner.c``).

The 1x1 convs run as a register-tiled GEMM (AVX2: 6 pixels x 16 channels, or 4 x 20/24; AVX-512: 12 x 32
or 8 x 40/48); the depthwise convs and pools are vectorised over channels. ``build_engine(model, (H, W))``
plans a network for one input size.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shufflenet._system import atomic_write, cache_dir, cpu_info, usable_cores
from shufflenet.deploy.engine_abi import (
    ABI_VERSION,
    ACTIVATIONS,
    HEADER,
    INT8_SLOTS,
    PLAN_MAGIC,
    POOL_WINDOWS,
    Op,
    PlanFile,
    check_library,
    fields,
    make_op,
    make_plan_header,
)
from shufflenet.deploy.errors import RuntimeUnavailable
from shufflenet.deploy.lower import (
    Conv,
    Copy,
    GlobalAverage,
    Operation,
    Pool,
    Program,
    Read,
    Shift,
    SqueezeExcite,
    Write,
    lower,
    reads_of,
)
from shufflenet.deploy.quantize import (
    ChannelParams,
    QuantizationError,
    QuantizedConv,
    QuantizedProgram,
    QuantizedSqueeze,
    Requantize,
    quantize_model_program,
)
from shufflenet.models._base import ClassifierNet

CSRC = Path(__file__).with_name("csrc")
SOURCE = CSRC / "engine.c"
# What every build includes besides its sources: the plan's layout, the vector layer.
HEADERS = (HEADER, CSRC / "vector.h", CSRC / "int8.c")
RUNNER_SOURCE = CSRC / "runner.c"
# Instruction sets the engine compiles for (csrc/vector.h): (compiler flags, x86 CPU flags they need,
# floats per vector). NEON is part of every aarch64 CPU; the plain-C build runs anywhere, slowly.
ISAS = {
    "avx512": (("-mavx512f", "-mavx512vl", "-mavx2", "-mfma"), {"avx512f", "avx512vl", "avx2", "fma"}, 16),
    "avx2": (("-mavx2", "-mfma"), {"avx2", "fma"}, 8),
    "neon": ((), set(), 4),
    "generic": ((), set(), 8),
}
X86_ISAS = ("avx512", "avx2")
# No contraction of a * b + c into an FMA: the int8 kernels' float steps match quantize.py's bit for bit.
COMPILE_FLAGS = ("-O3", "-shared", "-fPIC", "-std=gnu11", "-pthread", "-ffp-contract=off")
AARCH64_CROSS_COMPILER = "aarch64-linux-gnu-gcc"


class EngineUnavailable(RuntimeUnavailable):
    """The engine cannot run here (CPU, compiler) or cannot run this model; the message says which."""


def _cpu_flags() -> set[str]:
    return set(cpu_info().get("flags", "").split())


def _machine() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def isas_here() -> list[str]:
    """The instruction sets whose engine build this machine loads, widest first (plain C last)."""
    if _machine() == "aarch64":
        return ["neon", "generic"]
    if _machine() == "x86_64":
        flags = _cpu_flags()
        return [isa for isa in X86_ISAS if ISAS[isa][1] <= flags] + ["generic"]
    return ["generic"]


def engine_isa() -> str:
    """The instruction set the engine is built for here: ``$SHUFFLENET_ENGINE_ISA`` (``avx512``, ``avx2``,
    ``neon`` or ``generic``) if set, else the widest this CPU runs (plain C where no vector build
    does). Raises :class:`EngineUnavailable` for a choice this CPU cannot run."""
    here = isas_here()
    chosen = os.environ.get("SHUFFLENET_ENGINE_ISA")
    if chosen is None:
        return here[0]
    if chosen not in ISAS:
        raise EngineUnavailable(f"SHUFFLENET_ENGINE_ISA={chosen!r}: use one of {', '.join(ISAS)} or unset it")
    if chosen not in here:
        missing = " ".join(sorted(ISAS[chosen][1] - _cpu_flags())) or f"{chosen} (a {_machine()} CPU)"
        raise EngineUnavailable(f"SHUFFLENET_ENGINE_ISA={chosen}: this CPU lacks {missing}; unset it")
    return chosen


_LIBRARIES: dict[str, ctypes.CDLL] = {}


def _compiler() -> str:
    """The C compiler (``$CC``, default ``cc``), or :class:`EngineUnavailable` saying to install one."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise EngineUnavailable("the shufflenet engine is compiled on first use; install a C compiler (cc)")
    return compiler


def _build(
    name: str,
    compiler: str,
    flags: Sequence[str],
    sources: Sequence[Path],
    suffix: str,
    link: Sequence[str] = (),
) -> Path:
    """``sources`` compiled into ``$SHUFFLENET_CACHE/<name>-<hash><suffix>`` (``link``: libraries after
    them), reused while the sources, the compiler and the flags are unchanged; older builds of ``name``
    are deleted."""
    identity = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = b"".join(path.read_bytes() for path in (*sources, *HEADERS))
    key += " ".join((compiler, identity, *flags, *link)).encode()
    cache = cache_dir()
    target = cache / f"{name}-{hashlib.sha256(key).hexdigest()[:16]}{suffix}"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        # Compile beside the target, then rename: a concurrent or interrupted build never leaves half a file.
        with tempfile.TemporaryDirectory(dir=cache) as folder:
            built = Path(folder) / target.name
            result = subprocess.run(
                [compiler, *flags, *map(str, sources), *link, "-o", str(built)],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                names = " ".join(source.name for source in sources)
                raise EngineUnavailable(f"compiling {names} failed: {result.stderr.strip()[:500]}")
            os.replace(built, target)
        for stale in cache.glob(f"{name}-*{suffix}"):  # builds of older sources or other compilers
            if stale != target:
                stale.unlink(missing_ok=True)
    return target


def load_library(isa: str | None = None) -> ctypes.CDLL:
    """The engine compiled for ``isa`` (default :func:`engine_isa`), built on first use into
    ``$SHUFFLENET_CACHE`` (default ~/.cache/shufflenet) and reused while the source is unchanged. Raises
    :class:`EngineUnavailable` for an instruction set this CPU lacks or without a C compiler (``$CC``,
    default ``cc``)."""
    isa = isa or engine_isa()
    if isa in _LIBRARIES:
        return _LIBRARIES[isa]
    if isa not in isas_here():
        raise EngineUnavailable(f"this {_machine()} CPU cannot load the engine built for {isa}")
    target = _build(f"engine-{isa}", _compiler(), (*COMPILE_FLAGS, *ISAS[isa][0]), [SOURCE], ".so")
    library = open_library(target)
    _LIBRARIES[isa] = library
    return library


def open_library(path: str | os.PathLike) -> ctypes.CDLL:
    """A compiled engine library at ``path`` with its functions typed, after checking that it was built from
    this package's engine.h (raises :class:`AbiMismatch` otherwise). :func:`load_library` builds and opens
    the package's own; benchmarks/engine_ab.py opens builds of other revisions."""
    library = ctypes.CDLL(str(path))
    library.shufflenet_engine_run.restype = None
    library.shufflenet_engine_run.argtypes = [ctypes.c_void_p, ctypes.c_int] + [ctypes.c_void_p] * 5
    library.shufflenet_engine_lanes.restype = ctypes.c_int
    library.shufflenet_engine_bf16.restype = ctypes.c_int
    library.shufflenet_pool_create.restype = ctypes.c_void_p
    library.shufflenet_pool_create.argtypes = [ctypes.c_int]
    library.shufflenet_pool_destroy.restype = None
    library.shufflenet_pool_destroy.argtypes = [ctypes.c_void_p]
    check_library(library)
    return library


def build_runner(isa: str) -> tuple[list[str], Path]:
    """The engine as a program that runs a saved plan (``csrc/runner.c``; see :meth:`Plan.save`),
    compiled for ``isa``: (the command prefix that runs it here, the executable). An aarch64 (NEON) build
    on another CPU is cross-compiled (``aarch64-linux-gnu-gcc``, static) and runs under ``qemu-aarch64``.
    Raises :class:`EngineUnavailable` where the compiler or emulator is missing."""
    if isa not in ISAS:
        raise EngineUnavailable(f"no engine build for {isa!r}: use one of {', '.join(ISAS)}")
    flags = ["-O3", "-std=gnu11", "-pthread", "-ffp-contract=off", *ISAS[isa][0]]
    prefix: list[str] = []
    if isa == "neon" and _machine() != "aarch64":
        compiler = shutil.which(AARCH64_CROSS_COMPILER)
        emulator = shutil.which("qemu-aarch64")
        if compiler is None or emulator is None:
            raise EngineUnavailable(
                "the aarch64 engine runs here under emulation: install gcc-aarch64-linux-gnu and qemu-user"
            )
        flags.append("-static")
        prefix = [emulator]
    elif isa not in isas_here():
        raise EngineUnavailable(f"this {_machine()} CPU cannot run the engine built for {isa}")
    else:
        compiler = _compiler()
    executable = _build(f"runner-{isa}", compiler, flags, [RUNNER_SOURCE, SOURCE], "", link=["-lm"])
    return [*prefix, str(executable)], executable


def run_saved_plan(
    command: Sequence[str], plan: str | os.PathLike, batch: np.ndarray, *, threads: int = 1
) -> np.ndarray:
    """Logits of ``batch`` (N x C x H x W) from the runner ``command`` (:func:`build_runner`) on a saved
    plan, on ``threads`` threads. Raises :class:`EngineUnavailable` with the runner's message if it
    fails."""
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    with tempfile.TemporaryDirectory() as folder:
        images, logits = Path(folder) / "input.f32", Path(folder) / "logits.f32"
        images.write_bytes(batch.tobytes())
        result = subprocess.run(
            [*command, str(plan), str(images), str(logits), "0", str(threads)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise EngineUnavailable(result.stderr.strip() or f"the runner failed ({result.returncode})")
        return np.fromfile(logits, np.float32).reshape(batch.shape[0], -1)


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
    worth remaining make one panel; a last narrower panel is padded to a half vector, at least 16 floats
    (8 for 4-float vectors)."""
    panels, start = [], 0
    while start < channels:
        remaining = channels - start
        wide = remaining in (5 * lanes // 2, 3 * lanes) or remaining < 2 * lanes
        width = remaining if wide else 2 * lanes
        panels.append((start, start + max(_round_up(width, lanes // 2), min(16, 2 * lanes))))
        start += width
    return panels


def _bfloat16_pairs(weights: np.ndarray) -> np.ndarray:
    """Weights (groups x K x N) rounded to bfloat16 (nearest even) and paired along K as engine.h's
    PointwiseOp ``bfloat16`` reads them: groups x (K + 1) // 2 x N words (input channel 2j in the low half,
    2j + 1 in the high half, 0 past K), as float32 bits."""
    if weights.shape[1] % 2:
        weights = np.concatenate([weights, np.zeros_like(weights[:, :1])], axis=1)
    halves = torch.from_numpy(np.ascontiguousarray(weights, np.float32)).bfloat16().view(torch.int16).numpy()
    halves = halves.view(np.uint16).astype(np.uint32)
    return (halves[:, 0::2] | (halves[:, 1::2] << 16)).view(np.float32)


class _Planner:
    """Collects operations, buffers and the two arenas of a plan, for vectors of ``lanes`` floats."""

    def __init__(
        self, lanes: int, quantized: QuantizedProgram | None = None, *, bfloat16: bool = False
    ) -> None:
        self.lanes = lanes
        # bf16 plans: float maps, every conv a pointwise op with bfloat16 weights and inputs rounded to them
        self.bfloat16 = bfloat16
        # int8 plans: uint8 maps; ``current`` holds the integer parameters of the operation being planned.
        self.quantized = quantized
        self.current: _OpIntegers | None = None
        self.ops: list[Op] = []
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

    def map_buffer(self, role: str, values: int, *, real: bool = False) -> int:
        """The buffer for ``role`` holding ``values`` map values: floats, or bytes in an int8 plan (unless
        ``real``: the logits)."""
        if self.quantized is None or real:
            return self.buffer(role, values)
        return self.buffer(role, -(-values // 4))

    @property
    def value_bytes(self) -> int:
        return 4 if self.quantized is None else 1

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

    def op(self, kind: str, **values: int) -> None:
        """Append an operation of ``kind`` (engine.h's names for the kind and its fields)."""
        self.ops.append(make_op(kind, **values))

    # -- layers -------------------------------------------------------------------------------------

    def pointwise(
        self,
        source: _Feature,
        weight: np.ndarray,
        bias: np.ndarray,
        *,
        groups: int,
        activation: int,
        target: tuple[int, int, int] | None = None,
        role: str = "",
        residual: _Feature | None = None,
        lines: tuple[Sequence[int], int] | None = None,
        index: Sequence[int] | None = None,
        size: tuple[int, int] | None = None,
        out_pitch: int = 0,
    ) -> _Feature:
        """A (grouped) 1x1 conv reading ``source``'s logical channels wherever they are; the output goes to
        ``target`` = (buffer, stride, channel offset) or a fresh ``role`` buffer. ``lines`` = (start offset
        of each line of output pixels, input step between neighbours), ``index`` and ``size`` override the
        addressing (the stem conv reads its 3x3 windows this way)."""
        if self.quantized is not None:
            return self._pointwise_int8(
                source,
                target=target,
                role=role,
                residual=residual,
                lines=lines,
                index=index,
                size=size,
                out_pitch=out_pitch,
                groups=groups,
            )
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
        if self.bfloat16:
            if k_per_group > BFLOAT16_MAX_K:
                raise EngineUnavailable(
                    f"a bf16 conv reads at most {BFLOAT16_MAX_K} channels, not {k_per_group}"
                )
            dense = _bfloat16_pairs(dense)
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
        self._emit_pointwise(
            source,
            (buffer, stride, offset),
            residual,
            lines,
            index,
            height * width,
            groups=groups,
            k_per_group=k_per_group,
            n_per_group=n_per_group,
            n_padded=n_pad,
            weights=self.add_floats(packed),
            bias=self.add_floats(packed_bias),
            activation=activation,
            target_pitch=out_pitch,
            bfloat16=int(self.bfloat16),
            **self._no_pointwise_integers(),
        )
        return _Feature(buffer, height, width, stride, list(range(offset, offset + out_channels)))

    def depthwise(
        self,
        source: _Feature,
        weight: np.ndarray,
        bias: np.ndarray,
        *,
        stride: int,
        activation: int,
        target: int,
    ) -> _Feature:
        """A 3x3 depthwise conv over ``source``'s physical channels (filters placed where each logical
        channel lives, so any channel order works) into buffer ``target``; the output keeps the order."""
        channels = source.channels
        if sorted(source.positions) != list(range(channels)):
            raise EngineUnavailable("a depthwise conv needs its input channels packed at the pixel's start")
        c_pad = _round_up(channels)
        positions = list(source.positions)
        if self.quantized is None:
            taps = np.zeros((9, c_pad), np.float32)
            shifted_bias = np.zeros(c_pad, np.float32)
            taps[:, positions] = weight.reshape(channels, 9).T
            shifted_bias[positions] = bias
            arrays = {"weights": self.add_floats(taps), "bias": self.add_floats(shifted_bias)}
            arrays |= self._no_integers()
        else:
            arrays = self._depthwise_integers(source)
        height, width = (source.height - 1) // stride + 1, (source.width - 1) // stride + 1
        out_stride = c_pad
        buffer = target
        self.op(
            "depthwise",
            source=source.buffer,
            height=source.height,
            width=source.width,
            source_stride=source.stride,
            # whole 8-channel blocks of floats (see engine.c); the int8 kernel takes any count
            channels=c_pad if self.quantized is None else channels,
            stride=stride,
            target=buffer,
            out_height=height,
            out_width=width,
            target_stride=out_stride,
            target_offset=0,
            activation=activation,
            **arrays,
        )
        return _Feature(buffer, height, width, out_stride, list(source.positions))

    def pool(
        self, source: _Feature, *, average: bool, target: tuple[int, int, int], window: int = 3
    ) -> _Feature:
        """3x3 stride-2 pooling (padding 1), or with ``window=2`` 2x2 stride-2 average pooling (no padding),
        over physical channels into ``target`` = (buffer, stride, channel offset)."""
        channels = source.channels
        if sorted(source.positions) != list(range(channels)):
            raise EngineUnavailable("pooling needs its input channels packed at the pixel's start")
        if window == 2:
            height, width, kind = source.height // 2, source.width // 2, "average_2x2"
        else:
            height, width = (source.height - 1) // 2 + 1, (source.width - 1) // 2 + 1
            kind = "average_3x3" if average else "max_3x3"
        buffer, stride, offset = target
        self.op(
            "pool",
            window=POOL_WINDOWS[kind],
            source=source.buffer,
            height=source.height,
            width=source.width,
            source_stride=source.stride,
            channels=channels,
            target=buffer,
            out_height=height,
            out_width=width,
            target_stride=stride,
            target_offset=offset,
            **self._pool_integers(source),
        )
        return _Feature(buffer, height, width, stride, [offset + p for p in source.positions])

    def gather(
        self,
        source: _Feature,
        index: Sequence[int],
        lines: tuple[Sequence[int], int],
        line_length: int,
        target: tuple[int, int, int],
        target_pitch: int = 0,
    ) -> None:
        """Copy channels read at ``index`` offsets (lines of pixels as the pointwise conv's) into
        ``target`` = (buffer, stride, channel offset), in order; output lines ``target_pitch`` pixels
        apart (0: packed)."""
        buffer, stride, offset = target
        self.op(
            "gather",
            **self._addressing(source, lines, index, line_length),
            channels=len(index),
            target=buffer,
            target_stride=stride,
            target_offset=offset,
            target_pitch=target_pitch,
            value_bytes=self.value_bytes,
        )

    def global_average(self, source: _Feature, target: int) -> None:
        """The mean of each of ``source``'s physical channels into buffer ``target`` (same positions)."""
        self.op(
            "global_average",
            source=source.buffer,
            pixels=source.pixels,
            source_stride=source.stride,
            channels=source.stride,
            target=target,
            **(self._global_average_integers(source) if self.quantized is not None else self._no_integers()),
        )

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
        self.op(
            "copy",
            source=source.buffer,
            source_stride=source.stride,
            pixels=source.pixels,
            target=buffer,
            target_stride=stride,
            runs=runs_offset,
            run_count=len(runs),
            value_bytes=self.value_bytes,
        )
        return placed

    # -- int8 (uint8 maps; the integer parameters of the operation being placed are ``self.current``) ----

    def _requantize(self, requantize: Requantize, order: Sequence[int] | None = None, size: int = 0) -> dict:
        """The arena offsets of ``requantize``'s arrays, placed at ``order`` (physical positions) of
        ``size`` entries where given."""
        arrays = [requantize.multiplier, requantize.low, requantize.high, requantize.zero]
        if order is not None:
            placed = []
            for values in arrays:
                spread = np.zeros(size, values.dtype)
                spread[list(order)] = values
                placed.append(spread)
            arrays = placed
        multipliers, lows, highs, zeros = arrays
        return {
            "multipliers": self.add_floats(multipliers),
            "lows": self.add_floats(lows),
            "highs": self.add_floats(highs),
            "zeros": self.add_ints(zeros),
        }

    def _record(self, **offsets: int) -> int:
        """The int arena offset of an int8 operation's record of array offsets (engine.h's INT8_ slots;
        those not given are 0)."""
        record = np.zeros(INT8_SLOTS["fields"], np.int32)
        for name, offset in offsets.items():
            record[INT8_SLOTS[name]] = offset
        return self.add_ints(record)

    def _pointwise_int8(
        self,
        source: _Feature,
        *,
        groups: int,
        target: tuple[int, int, int] | None,
        role: str,
        residual: _Feature | None,
        lines: tuple[Sequence[int], int] | None,
        index: Sequence[int] | None,
        size: tuple[int, int] | None,
        out_pitch: int,
    ) -> _Feature:
        """:meth:`pointwise` on uint8 maps: the input channels (or taps) read in runs of 4 bytes, sorted by
        where they lie, a byte of a run that the conv does not read weighted 0; the input zero points folded
        into the bias."""
        current = self.current
        conv = current.integer
        assert isinstance(conv, QuantizedConv)
        out_channels, per_group_channels = conv.weight.shape[:2]
        taps = conv.weight.shape[2] * conv.weight.shape[3]
        k_per_group = per_group_channels * taps
        n_per_group = out_channels // groups
        height, width = size if size is not None else (source.height, source.width)
        index = np.asarray(source.positions if index is None else index, np.int64)
        if index.size != groups * k_per_group:
            raise EngineUnavailable(f"a conv reads {groups * k_per_group} channels of {index.size}")
        dense = conv.weight.reshape(groups, n_per_group, k_per_group).astype(np.int64)
        zeros = np.repeat(current.source.zero.reshape(groups, per_group_channels), taps, axis=1)
        bias = conv.bias.reshape(groups, n_per_group) - np.einsum("gnk,gk->gn", dense, zeros)
        if np.abs(bias).max() + 4 * k_per_group * 255 * 127 >= 2**31:
            raise EngineUnavailable("an int8 conv's sums could leave int32 (too many inputs); plan in fp32")
        runs: list[list[int]] = []
        where: list[list[tuple[int, int]]] = []  # per group, per k: (run, byte)
        for group in range(groups):
            offsets = index[group * k_per_group : (group + 1) * k_per_group]
            starts: list[int] = []
            placed = [(0, 0)] * k_per_group
            for k in np.argsort(offsets, kind="stable"):
                if not starts or offsets[k] >= starts[-1] + 4:
                    starts.append(int(offsets[k]))
                placed[k] = (len(starts) - 1, int(offsets[k]) - starts[-1])
            runs.append(starts)
            where.append(placed)
        quads = max(len(starts) for starts in runs)
        n_padded = _round_up(n_per_group, 16)
        packed = np.zeros((groups, n_padded // 16, quads, 16, 4), np.int8)
        for group in range(groups):
            padded = np.zeros((n_padded, k_per_group), np.int8)
            padded[:n_per_group] = conv.weight.reshape(groups, n_per_group, k_per_group)[group]
            for k, (run, byte) in enumerate(where[group]):
                packed[group, :, run, :, byte] = padded[:, k].reshape(-1, 16)
            runs[group] += [0] * (quads - len(runs[group]))
        real = conv.real_output
        if target is None:
            stride = _round_up(out_channels)
            target = (self.map_buffer(role, height * width * stride, real=real), stride, 0)
        buffer, stride, offset = target
        arrays = self._requantize(conv.requantize)
        if residual is not None:
            arrays["residual_multipliers"] = self.add_floats(conv.requantize.residual_multiplier)
            arrays["residual_zeros"] = self.add_ints(current.residual.zero)
        self._emit_pointwise(
            source,
            target,
            residual,
            lines,
            np.concatenate(runs),
            height * width,
            groups=groups,
            k_per_group=quads,
            n_per_group=n_per_group,
            n_padded=n_padded,
            weights=self.add_ints(packed.view(np.int32)),
            bias=self.add_ints(bias),
            activation=0,
            target_pitch=out_pitch,
            value_bytes=1,
            real_output=int(real),
            bfloat16=0,
            integers=self._record(**arrays),
        )
        return _Feature(buffer, height, width, stride, list(range(offset, offset + out_channels)))

    def _addressing(
        self, source: _Feature, lines: tuple[Sequence[int], int], index: Sequence[int], line_length: int
    ) -> dict:
        """The fields that say where a pointwise conv or a gather reads: ``source``'s buffer, the start of
        each line of output pixels and the step between neighbours (``lines``), each channel's offset."""
        line_starts, step = lines
        return {
            "source": source.buffer,
            "line_starts": self.add_ints(line_starts),
            "lines": len(line_starts),
            "line_length": line_length,
            "step": step,
            "index": self.add_ints(index),
        }

    def _emit_pointwise(
        self,
        source: _Feature,
        target: tuple[int, int, int],
        residual: _Feature | None,
        lines: tuple[Sequence[int], int] | None,
        index: Sequence[int],
        pixels: int,
        **fields: int,
    ) -> None:
        """A pointwise operation's addressing (input lines and index, target, residual), then ``fields``."""
        lines = lines if lines is not None else ([0], source.stride)
        buffer, stride, offset = target
        self.op(
            "pointwise",
            **self._addressing(source, lines, index, pixels // len(lines[0])),
            target=buffer,
            target_stride=stride,
            target_offset=offset,
            residual=-1 if residual is None else residual.buffer,
            residual_stride=0 if residual is None else residual.stride,
            # a residual lies in channel order from here
            residual_offset=0 if residual is None else residual.positions[0],
            **fields,
        )

    def _no_pointwise_integers(self) -> dict:
        """A pointwise conv's int8 fields in a float plan: unused."""
        return {"value_bytes": 4, "integers": 0, "real_output": 0}

    def _no_integers(self) -> dict:
        """The int8 fields of a depthwise conv, pool, global average or scale in a float plan: unused."""
        return {"value_bytes": 4, "integers": 0}

    def _depthwise_integers(self, source: _Feature) -> dict:
        """An int8 depthwise conv's filters (integers held as floats, rows of the channels rounded up to 8,
        which the float kernel sums exactly), integer bias and parameters, placed where each channel
        lives."""
        current = self.current
        conv = current.integer
        assert isinstance(conv, QuantizedConv)
        channels, positions = source.channels, list(source.positions)
        taps = np.zeros((9, _round_up(channels)), np.float32)
        taps[:, positions] = conv.weight.reshape(channels, 9).T
        bias = np.zeros(channels, np.int32)
        bias[positions] = conv.bias
        # The byte form for the VNNI kernel: per row of the window, each channel's three taps and a 0; the
        # input zero points folded into the bias, as that kernel sums q * w over a zero-point border.
        tap_rows = np.zeros((3, _round_up(channels, 16), 4), np.int8)
        tap_rows[:, positions, :3] = conv.weight.reshape(channels, 3, 3).transpose(1, 0, 2)
        folded = bias.astype(np.int64)
        zeros = self.current.source.zero.astype(np.int64)
        folded[positions] -= zeros * conv.weight.reshape(channels, 9).astype(np.int64).sum(1)
        return {
            "weights": self.add_floats(taps),
            "bias": self.add_ints(bias),
            **self._uint8_fields(
                positions,
                channels,
                conv.requantize,
                tap_rows=self.add_ints(tap_rows.view(np.int32)),
                folded_bias=self.add_ints(folded.astype(np.int32)),
            ),
        }

    def _pool_integers(self, source: _Feature) -> dict:
        """A pool's int8 fields: the input zero points and, for an average pool, its requantization (a max
        pool moves bytes); unused (empty) in a float plan."""
        channels, positions = source.channels, list(source.positions)
        if self.quantized is None:
            return self._no_integers()
        current = self.current
        requantize = current.integer
        if not isinstance(requantize, Requantize):
            ones = np.ones(channels, np.float32)
            requantize = Requantize(ones, ones, ones, np.zeros(channels, np.int32))
        return self._uint8_fields(positions, channels, requantize)

    def _global_average_integers(self, source: _Feature) -> dict:
        """An int8 global average's parameters, per physical channel."""
        assert isinstance(self.current.integer, Requantize)
        return self._uint8_fields(source.positions, source.stride, self.current.integer)

    def _uint8_fields(self, positions: Sequence[int], size: int, requantize: Requantize, **more: int) -> dict:
        """The fields of an operation on a uint8 map: its input zero points and requantization arrays,
        ``size`` entries with the channels' at ``positions`` (``more``: other arrays of its record)."""
        input_zeros = np.zeros(size, np.int32)
        input_zeros[list(positions)] = self.current.source.zero
        arrays = self._requantize(requantize, positions, size)
        record = self._record(input_zeros=self.add_ints(input_zeros), **arrays, **more)
        return {"value_bytes": 1, "integers": record}


@dataclass
class _OpIntegers:
    """What an int8 plan needs of the operation being placed (:mod:`shufflenet.deploy.quantize`): its
    integer parameters and the channel parameters of what it reads, per channel read."""

    integer: QuantizedConv | QuantizedSqueeze | Requantize | None
    source: ChannelParams
    residual: ChannelParams | None


def _op_integers(quantized: QuantizedProgram, op: Operation, index: int) -> _OpIntegers:
    def params(read: Read) -> ChannelParams:
        return quantized.maps[read.map].take(read.channels)

    residual = getattr(op, "residual", None)
    return _OpIntegers(
        quantized.operations[index], params(op.source), None if residual is None else params(residual)
    )


@dataclass
class Plan:
    """A network planned for the engine at one input size, for vectors of ``lanes`` floats: the
    operations (engine.h), the float and int32 arenas, the size of every buffer in floats, which buffer
    is the caller's input and where the logits are."""

    lanes: int
    ops: list[Op]
    floats: np.ndarray
    ints: np.ndarray
    buffer_floats: list[int]
    input_buffer: int
    input_shape: tuple[int, int, int]
    output: _Feature
    quantized: QuantizedProgram | None = None
    """An int8 plan's quantized program (its integer reference: quantize.run_quantized)."""

    @property
    def precision(self) -> str:
        """``int8`` (uint8 maps), ``bf16`` (bfloat16 dot products) or ``fp32``."""
        pointwise = [values for kind, values in map(fields, self.ops) if kind == "pointwise"]
        if any(op.value_bytes == 1 for op in pointwise):
            return "int8"
        return "bf16" if any(op.bfloat16 for op in pointwise) else "fp32"

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as a file that ``runner.c`` runs (engine.h's PlanFile header, then the buffer
        sizes, the logits' positions, the operations and the two arenas), written whole or not at all."""
        output = self.output
        header = make_plan_header(
            lanes=self.lanes,
            ops=len(self.ops),
            floats=self.floats.size,
            ints=self.ints.size,
            buffers=len(self.buffer_floats),
            input_buffer=self.input_buffer,
            input_channels=self.input_shape[0],
            input_height=self.input_shape[1],
            input_width=self.input_shape[2],
            output_buffer=output.buffer,
            outputs=output.channels,
        )
        parts = [
            bytes(header),
            np.asarray(self.buffer_floats, np.int64).tobytes(),
            np.asarray(output.positions, np.int64).tobytes(),
            bytes((Op * len(self.ops))(*self.ops)),
            self.floats.astype(np.float32).tobytes(),
            self.ints.astype(np.int32).tobytes(),
        ]
        data = b"".join(parts)
        atomic_write(Path(path), lambda handle: handle.write(data))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        """A plan written by :meth:`save` (its quantized program is not kept: the plan alone runs). Raises
        ValueError for a file that is not a plan of this engine version."""
        data = Path(path).read_bytes()
        header = (
            PlanFile.from_buffer_copy(data[: ctypes.sizeof(PlanFile)])
            if len(data) >= ctypes.sizeof(PlanFile)
            else None
        )
        if header is None or header.magic != PLAN_MAGIC:
            raise ValueError(f"{path} is not an engine plan")
        if header.abi != ABI_VERSION or header.op_size != ctypes.sizeof(Op):
            raise ValueError(f"{path} is a plan of another engine version: plan it again with this package")
        offset = ctypes.sizeof(PlanFile)

        def take(dtype: type, count: int) -> np.ndarray:
            nonlocal offset
            size = np.dtype(dtype).itemsize * count
            if offset + size > len(data):
                raise ValueError(f"{path} is truncated")
            values = np.frombuffer(data, dtype, count, offset).copy()
            offset += size
            return values

        buffer_floats = take(np.int64, header.buffers)
        positions = take(np.int64, header.outputs)
        op_bytes = ctypes.sizeof(Op) * header.ops
        ops = list((Op * header.ops).from_buffer_copy(data[offset : offset + op_bytes]))
        offset += op_bytes
        floats = _aligned_floats(header.floats)
        floats[:] = take(np.float32, header.floats)
        ints = take(np.int32, header.ints)
        if offset != len(data):
            raise ValueError(f"{path} is truncated or corrupt")
        return cls(
            lanes=header.lanes,
            ops=ops,
            floats=floats,
            ints=ints,
            buffer_floats=[int(size) for size in buffer_floats],
            input_buffer=header.input_buffer,
            input_shape=(header.input_channels, header.input_height, header.input_width),
            output=_Feature(header.output_buffer, 1, 1, 0, [int(p) for p in positions]),
        )


class Engine:
    """A planned network: call it with an NCHW float32 batch (any batch size, the planned H x W) to get
    the logits as NumPy."""

    def __init__(self, library: ctypes.CDLL, plan: Plan, threads: int = 1):
        if library.shufflenet_engine_lanes() != plan.lanes:
            raise EngineUnavailable(
                f"the plan packs weights for {plan.lanes}-float vectors, the library runs "
                f"{library.shufflenet_engine_lanes()}; plan for this library's instruction set"
            )
        if plan.precision == "bf16" and not library.shufflenet_engine_bf16():
            raise EngineUnavailable(BFLOAT16_MISSING)
        self._library = library
        self.plan = plan
        self.input_shape = plan.input_shape
        self._ops = (Op * len(plan.ops))(*plan.ops)
        self._floats, self._ints = plan.floats, plan.ints
        self._buffers = [_aligned_floats(size) for size in plan.buffer_floats]
        self._pointers = (ctypes.c_void_p * len(self._buffers))(*[b.ctypes.data for b in self._buffers])
        self._input_buffer = plan.input_buffer
        self._output = plan.output
        self.operations = len(plan.ops)
        self._lock = threading.Lock()
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.threads = threads
        self._pool = library.shufflenet_pool_create(threads)
        if not self._pool:
            raise EngineUnavailable(f"could not start {threads} engine threads")
        # The pool's threads end with the engine (they sleep between calls and cost nothing meanwhile).
        weakref.finalize(self, library.shufflenet_pool_destroy, self._pool)

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
        kind, op = fields(self._ops[index])
        if kind == "pointwise":
            pixels, k = op.lines * op.line_length, op.k_per_group * (4 if op.value_bytes == 1 else 1)
            precision = " int8" if op.value_bytes == 1 else " bf16" if op.bfloat16 else ""
            return f"pointwise{precision} {pixels} px, {op.groups} x ({k} -> {op.n_per_group})"
        if kind == "depthwise":
            return f"depthwise {op.height}x{op.width} px, {op.channels} ch, stride {op.stride}"
        if kind == "pool":
            window = {code: name for name, code in POOL_WINDOWS.items()}[op.window]
            return f"{window.replace('_', ' ')} pool"
        if kind == "expand_depthwise":
            count = "three" if op.project else "two"
            return f"fused 1x1 + depthwise{' + 1x1' if op.project else ''} by rows (the next {count})"
        names = {"copy": "copy kept half", "pad_input": "pad input", "scale": "squeeze-excite scale"}
        return names.get(kind, kind.replace("_", " "))

    def multiply_adds(self, index: int) -> int:
        """Multiply-adds of planned operation ``index`` per image (a fused run's marker: those of the
        operations it runs; data movement: 0), to read its profile time as GMAC/s."""
        kind, op = fields(self._ops[index])
        if kind == "pointwise":  # int8: the 4-byte runs as read, unused bytes included
            runs = 4 if op.value_bytes == 1 else 1
            return op.lines * op.line_length * op.groups * op.k_per_group * runs * op.n_per_group
        if kind == "depthwise":
            return 9 * op.out_height * op.out_width * op.channels
        if kind == "expand_depthwise":
            return sum(self.multiply_adds(index + step) for step in range(1, 4 if op.project else 3))
        return 0

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
                    self._pool,
                    len(self._ops),
                    ctypes.addressof(self._ops),
                    self._pointers,
                    self._floats.ctypes.data,
                    self._ints.ctypes.data,
                    timings,
                )
                logits[index] = result[self._output.positions]
        return logits


def _window_taps(channels: int, *, channel_step: int, row_step: int, pixel_step: int) -> np.ndarray:
    """Offsets of a 3x3 window's taps from its top-left input, in a conv weight's (channel, ky, kx)
    order, for a map whose channels, rows and pixels lie the given numbers of floats apart."""
    c, ky, kx = np.meshgrid(np.arange(channels), np.arange(3), np.arange(3), indexing="ij")
    return (c * channel_step + ky * row_step + kx * pixel_step).ravel()


def _stem(planner: _Planner, op: Conv, channels: int, height: int, width: int) -> _Feature:
    """The first conv (3x3, padding 1, any stride) as a GEMM over the zero-bordered image."""
    stride = op.stride
    padded = planner.map_buffer("padded", channels * (height + 2) * (width + 2))
    integers = planner._no_integers()
    if planner.quantized is not None:
        image = planner.current.source
        inverse = (1.0 / image.scale.astype(np.float64)).astype(np.float32)
        record = planner._record(multipliers=planner.add_floats(inverse), zeros=planner.add_ints(image.zero))
        integers = {"value_bytes": 1, "integers": record}
    planner.op(
        "pad_input",
        source=planner.buffer("input", 0),
        channels=channels,
        height=height,
        width=width,
        target=padded,
        **integers,
    )
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    row = width + 2
    line_starts = [stride * oy * row for oy in range(out_h)]
    index = _window_taps(channels, channel_step=(height + 2) * row, row_step=row, pixel_step=1)
    source = _Feature(padded, height + 2, width + 2, 1, [])
    return planner.pointwise(
        source,
        op.weight,
        op.bias,
        groups=op.groups,
        activation=_activation_code(op.activation),
        role="stem",
        lines=(line_starts, stride),
        index=index,
        size=(out_h, out_w),
    )


def _activation_code(activation: str) -> int:
    """engine.h's code for an activation."""
    return ACTIVATIONS[activation]


class _Placement:
    """Where each map of a program lives: buffers handed out when a map is first written and taken back
    after its last read, so units ping-pong between a few buffers; a residual conv whose input dies with it
    writes over that input."""

    def __init__(self, planner: _Planner, program: Program, fuse_map_bytes: int) -> None:
        self.planner, self.program = planner, program
        self.features: dict[int, _Feature] = {}
        self.last_read: dict[int, int] = {}
        self.writers: dict[int, int] = {}
        for index, op in enumerate(program.operations):
            for read in reads_of(op):
                self.last_read[read.map] = index
            self.writers[op.target.map] = self.writers.get(op.target.map, 0) + 1
        self.last_read[program.output.map] = len(program.operations)
        # A conv whose map (at least ``fuse_map_bytes``) the next operation, a depthwise conv, reads may run
        # with it row by row, and a 1x1 conv reading the depthwise conv's map along with them
        # (_fuse_expansions): the first conv's inputs stay placed until the last of them is done, and the
        # last writes its own map (not in place over its residual), so none of them writes over rows the
        # first has still to read.
        self.fused_last: set[int] = set()
        operations = program.operations
        for index, (op, after) in enumerate(itertools.pairwise(operations)):
            size = program.maps[op.target.map]
            if not (
                isinstance(op, Conv)
                and isinstance(after, Conv)
                and after.kind == "depthwise"
                and after.source.map == op.target.map
                and 4 * size.height * size.width * _round_up(size.channels) >= fuse_map_bytes
            ):
                continue
            last = index + 1
            if index + 2 < len(operations):
                project = operations[index + 2]
                reads_depthwise = isinstance(project, Conv) and project.source.map == after.target.map
                if reads_depthwise and project.kind == "pointwise":
                    last = index + 2
                    self.fused_last.add(last)
            for read in reads_of(op):
                self.last_read[read.map] = max(self.last_read[read.map], last)
        self.free: list[str] = []
        self.roles: dict[int, str] = {}
        self.count = 0
        # A shift is addressing: its input map is stored with a zero border of ``margin`` pixels, and the 1x1
        # convs that read the shifted map read the input at each channel's displacement (Chen et al. 2019,
        # Fig. 2e: unshifted channels cost nothing, shifted ones no copy either).
        # A shift read by anything but 1x1 convs (FE-Net's squeeze-excite) is made real by a gather with the
        # same addressing.
        self.shifts: dict[int, Shift] = {}  # shifted map -> its Shift operation, read by addressing
        self.margins: dict[int, int] = {}  # bordered map -> margin
        self.busy_borders: set[str] = set()
        for op in program.operations:
            if isinstance(op, Shift):
                self.margins[op.source.map] = max(max(map(abs, op.dy)), max(map(abs, op.dx)))
                if self._addressable(op):
                    self.shifts[op.target.map] = op
                    self.last_read[op.source.map] = self.last_read.get(op.target.map, -1)

    def _addressable(self, shift: Shift) -> bool:
        """Whether only 1x1 convs read ``shift``'s output (so they can read its input at each channel's
        displacement). Raises unless a 1x1 conv alone writes its input and nothing else reads that."""
        readers = [op for op in self.program.operations if shift.target.map in [r.map for r in reads_of(op)]]
        others = [
            op
            for op in self.program.operations
            if op is not shift and shift.source.map in [r.map for r in reads_of(op)]
        ]
        writers = [op for op in self.program.operations if op.target.map == shift.source.map]
        if (
            others
            or len(writers) != 1
            or not (
                isinstance(writers[0], Conv)
                and writers[0].kind == "pointwise"
                and writers[0].residual is None
            )
        ):
            raise EngineUnavailable(
                "the engine runs a shift of a map that one 1x1 conv writes and only it reads"
            )
        return all(
            isinstance(op, Conv) and _strided_1x1(op) and op.source.map == shift.target.map for op in readers
        ) and not any(getattr(op, "residual", None) and op.residual.map == shift.target.map for op in readers)

    def read(self, read: Read) -> _Feature:
        feature = self.features[read.map]
        return _Feature(
            feature.buffer,
            feature.height,
            feature.width,
            feature.stride,
            [feature.positions[c] for c in read.channels],
        )

    def bordered_target(self, op: Conv) -> tuple[tuple[int, int, int], int]:
        """((buffer, pixel stride, float offset of the first interior pixel), pixels per row) for the output
        of ``op`` into a map with a zero border. Bordered buffers are only ever shared between maps of the
        same geometry, so their borders stay zero."""
        index = op.target.map
        feature, margin = self.program.maps[index], self.margins[index]
        stride = _round_up(feature.channels)
        pitch = feature.width + 2 * margin
        geometry = f"border{feature.height}x{feature.width}m{margin}s{stride}"
        role = geometry
        suffix = 0
        while role in self.busy_borders:
            suffix += 1
            role = f"{geometry}-{suffix}"
        self.busy_borders.add(role)
        self.roles[index] = role
        buffer = self.planner.map_buffer(role, (feature.height + 2 * margin) * pitch * stride)
        self.features[index] = _Feature(
            buffer, feature.height, feature.width, stride, list(range(feature.channels))
        )
        return (buffer, stride, (margin * pitch + margin) * stride), pitch

    def shifted_read(
        self, shift: Shift, channels: Sequence[int], stride: int, out_height: int
    ) -> tuple[_Feature, list[int], tuple[list[int], int]]:
        """(the bordered input, per-channel offsets, (line starts, step)) for reading ``channels`` of
        ``shift``'s output at ``stride``: channel k is read ``dy`` rows up and ``dx`` columns left of the
        output pixel."""
        source = self.features[shift.source.map]
        margin = self.margins[shift.source.map]
        pitch = source.width + 2 * margin
        index = []
        for k in channels:
            position = source.positions[shift.source.channels[k]]
            index.append(position + ((margin - shift.dy[k]) * pitch + (margin - shift.dx[k])) * source.stride)
        row = stride * pitch * source.stride
        return source, index, ([oy * row for oy in range(out_height)], stride * source.stride)

    def target(self, op: Operation) -> tuple[int, int, int]:
        """(buffer, pixel stride, channel offset) of ``op``'s output, placing its map on first write."""
        index = op.target.map
        if index not in self.features:
            feature = self.program.maps[index]
            single_conv = self.writers[index] == 1 and isinstance(op, Conv)
            stride = _round_up(feature.channels) if single_conv else feature.channels
            if self.free:
                role = self.free.pop()
            else:
                role, self.count = f"map{self.count}", self.count + 1
            self.roles[index] = role
            real = index == self.program.output.map
            buffer = self.planner.map_buffer(role, feature.height * feature.width * stride, real=real)
            self.features[index] = _Feature(
                buffer, feature.height, feature.width, stride, list(range(feature.channels))
            )
        feature = self.features[index]
        return feature.buffer, feature.stride, feature.positions[op.target.offset]

    def wrote(self, target: Write, positions: Sequence[int]) -> None:
        """Record where an operation put each channel it wrote (a depthwise conv, a pool or a copy keeps
        its input's physical order rather than the logical one)."""
        feature = self.features[target.map]
        feature.positions[target.offset : target.offset + len(positions)] = positions

    def in_place(self, op: Conv | SqueezeExcite, index: int) -> bool:
        """Place ``op`` (operation ``index``)'s output over its residual input where that input dies with
        it."""
        residual = op.residual
        if residual is None or self.last_read[residual.map] != index or index in self.fused_last:
            return False
        if self.writers[op.target.map] != 1 or op.target.map in self.features:
            return False
        if len(residual.channels) != self.program.maps[op.target.map].channels:
            return False
        if self.read(residual).positions != list(range(len(residual.channels))):
            return False
        self.features[op.target.map] = self.features[residual.map]
        self.roles[op.target.map] = self.roles.pop(residual.map)
        self.last_read.pop(residual.map)
        return True

    def residual(self, op: Conv | SqueezeExcite) -> _Feature | None:
        """``op``'s residual input, if any; the epilogue adds it channel by channel, so it must lie in
        channel order."""
        if op.residual is None:
            return None
        residual = self.read(op.residual)
        if not _contiguous(residual):
            raise EngineUnavailable("a residual must lie in channel order")
        return residual

    def output(self, op: Conv | SqueezeExcite, residual: _Feature | None, index: int) -> tuple[int, int, int]:
        """(buffer, pixel stride, channel offset) for ``op``'s output: over its ``residual`` where that
        map dies with operation ``index``, else ``op``'s own map."""
        if residual is not None and self.in_place(op, index):
            return residual.buffer, residual.stride, residual.positions[0]
        return self.target(op)

    def release(self, index: int) -> None:
        """Return the buffers of maps last read by operation ``index``."""
        for map_index, last in list(self.last_read.items()):
            if last == index and map_index in self.roles:
                role = self.roles.pop(map_index)
                if role in self.busy_borders:
                    self.busy_borders.discard(role)  # back to its own geometry's pool, never to the others
                else:
                    self.free.append(role)
                del self.last_read[map_index]


def _contiguous(feature: _Feature) -> bool:
    start = feature.positions[0]
    return feature.positions == list(range(start, start + len(feature.positions)))


def _one_by_one(planner: _Planner, place: _Placement, op: Conv, index: int) -> None:
    """A 1x1 conv as a GEMM over pixels: reading a shifted map at each channel's displacement, writing
    into a zero-bordered map for a shift to read, or plain (strided: every stride-th pixel of every
    stride-th row), its residual added in the epilogue, in place where the residual's map dies here."""
    residual = place.residual(op)
    out = place.program.maps[op.target.map]
    if op.source.map in place.shifts and op.target.map in place.margins:
        raise EngineUnavailable("the engine runs a 1x1 conv between two shifts only with a copy between them")
    addressing: dict = {}
    if op.source.map in place.shifts:
        shift = place.shifts[op.source.map]
        source, addressing["index"], addressing["lines"] = place.shifted_read(
            shift, op.source.channels, op.stride, out.height
        )
        addressing["size"] = (out.height, out.width)
    else:
        source = place.read(op.source)
        if op.stride > 1:
            row = op.stride * source.width * source.stride
            addressing["lines"] = ([oy * row for oy in range(out.height)], op.stride * source.stride)
            addressing["size"] = (out.height, out.width)
    if op.target.map in place.margins:
        target, addressing["out_pitch"] = place.bordered_target(op)
        addressing["lines"] = (
            [y * source.width * source.stride for y in range(source.height)],
            source.stride,
        )
        addressing["size"] = (source.height, source.width)
    else:
        target = place.output(op, residual, index)
    planner.pointwise(
        source,
        op.weight,
        op.bias,
        groups=op.groups,
        activation=_activation_code(op.activation),
        target=target,
        residual=residual,
        **addressing,
    )


def _dense_3x3(planner: _Planner, place: _Placement, op: Conv, index: int) -> None:
    """A dense (or grouped) 3x3 conv with padding 1 after the stem (the Table 4 peers' VGG-like, ResNet and
    ResNeXt units): its input copied into a zero-bordered map of its own, then a GEMM whose index table
    reads each output pixel's 3x3 window there, as the stem reads the image."""
    source = place.read(op.source)
    residual = place.residual(op)
    channels, height, width = source.channels, source.height, source.width
    stride, pitch = _round_up(channels), width + 2
    # A buffer per conv: nothing else writes it, so its border stays zero.
    bordered = planner.map_buffer(f"bordered-{index}", (height + 2) * pitch * stride)
    planner.gather(
        source,
        source.positions,
        ([y * width * source.stride for y in range(height)], source.stride),
        width,
        (bordered, stride, (pitch + 1) * stride),
        target_pitch=pitch,
    )
    out = place.program.maps[op.target.map]
    in_per_group = channels // op.groups
    window = _window_taps(in_per_group, channel_step=1, row_step=pitch * stride, pixel_step=stride)
    taps = np.concatenate([window + group * in_per_group for group in range(op.groups)])
    row = op.stride * pitch * stride
    target = place.output(op, residual, index)
    planner.pointwise(
        _Feature(bordered, height + 2, width + 2, stride, list(range(channels))),
        op.weight,
        op.bias,
        groups=op.groups,
        activation=_activation_code(op.activation),
        target=target,
        residual=residual,
        lines=([oy * row for oy in range(out.height)], op.stride * stride),
        index=taps,
        size=(out.height, out.width),
    )


def _squeeze_excite(planner: _Planner, place: _Placement, op: SqueezeExcite, index: int) -> None:
    """Squeeze-and-excitation (Zhang et al. 2018, Table 5): the channel means, two small 1x1 convs on them,
    then every channel scaled by the sigmoid of its gate, with the residual add and activation."""
    source = place.read(op.source)
    if not _contiguous(source):
        raise EngineUnavailable("squeeze-excite reads its channels in order")
    residual = place.residual(op)
    outer = planner.current
    squeeze = None if outer is None else outer.integer
    if isinstance(squeeze, QuantizedSqueeze):  # int8: each step with its own integers
        planner.current = _OpIntegers(squeeze.pool, outer.source, None)
    pooled = planner.buffer("se-pooled", source.stride)
    planner.global_average(source, pooled)
    squeezed = _Feature(pooled, 1, 1, source.stride, source.positions)
    if isinstance(squeeze, QuantizedSqueeze):
        planner.current = _OpIntegers(squeeze.reduce, outer.source, None)
    hidden = planner.pointwise(
        squeezed,
        op.reduce_weight[:, :, None, None],
        op.reduce_bias,
        groups=1,
        activation=ACTIVATIONS["relu"],
        role="se-hidden",
    )
    if isinstance(squeeze, QuantizedSqueeze):
        planner.current = _OpIntegers(squeeze.expand, squeeze.hidden, None)
    gate = planner.pointwise(
        hidden,
        op.expand_weight[:, :, None, None],
        op.expand_bias,
        groups=1,
        activation=ACTIVATIONS["none"],
        role="se-gate",
    )
    buffer, stride, offset = place.output(op, residual, index)
    planner.op(
        "scale",
        source=source.buffer,
        source_offset=source.positions[0],
        pixels=source.pixels,
        source_stride=source.stride,
        channels=len(source.positions),
        gate=gate.buffer,
        target=buffer,
        target_offset=offset,
        target_stride=stride,
        residual=-1 if residual is None else residual.buffer,
        residual_offset=0 if residual is None else residual.positions[0],
        residual_stride=0 if residual is None else residual.stride,
        activation=_activation_code(op.activation),
        **_scale_integers(planner, squeeze, outer, residual),
    )
    planner.current = outer


def _scale_integers(
    planner: _Planner, squeeze: QuantizedSqueeze | None, outer: _OpIntegers | None, residual: _Feature | None
) -> dict:
    """The scale operation's int8 fields (unused in a float plan)."""
    if not isinstance(squeeze, QuantizedSqueeze):
        return planner._no_integers()
    arrays = planner._requantize(squeeze.scale)
    if residual is not None:
        arrays["residual_multipliers"] = planner.add_floats(squeeze.scale.residual_multiplier)
        arrays["residual_zeros"] = planner.add_ints(outer.residual.zero)
    record = planner._record(
        input_zeros=planner.add_ints(outer.source.zero),
        gate_table=planner.add_floats(squeeze.gate_table),
        **arrays,
    )
    return {"value_bytes": 1, "integers": record}


def _strided_1x1(op: Conv) -> bool:
    """A 1x1 conv with a stride (ShiftResNet's and the ResNet peers' projections): a pointwise GEMM over
    every stride-th pixel."""
    return op.weight.shape[2:] == (1, 1) and op.padding == 0


def _describe(op: Operation) -> str:
    if isinstance(op, Conv):
        size = "x".join(str(k) for k in op.weight.shape[2:])
        kind = "dense" if op.kind == "conv" else op.kind
        return f"{kind} convs of {size} kernels with stride {op.stride} after the stem"
    return {"SqueezeExcite": "squeeze-excite units"}.get(type(op).__name__, f"{type(op).__name__} operations")


def _check_zero_borders(quantized: QuantizedProgram, place: _Placement, op: Operation) -> None:
    """In an int8 plan, the maps read through a border (a shift's input, a dense 3x3 conv's input copied into
    a bordered buffer) must have zero points 0: the borders hold 0 bytes, which stand for 0 only there.
    Those maps follow a ReLU in the registered families."""
    dense = (
        isinstance(op, Conv) and op.kind == "conv" and op.weight.shape[2:] == (3, 3) and op.source.map != 0
    )
    bordered = op.source.map in place.margins or dense
    if bordered and quantized.maps[op.source.map].take(op.source.channels).zero.any():
        raise EngineUnavailable(
            f"int8 plans read {_describe(op)} through a zero border, which needs an input that is never "
            "negative (after a ReLU); plan this model in fp32"
        )


def _plan(planner: _Planner, program: Program, fuse_map_bytes: int) -> _Feature:
    """Engine operations for ``program`` (:func:`shufflenet.deploy.lower.lower`), its maps placed so that
    the 1x1 convs whose maps take ``fuse_map_bytes`` can run row by row with the depthwise conv after
    them; returns where the output is. Raises :class:`EngineUnavailable` for operations the engine's
    kernels do not cover."""
    place = _Placement(planner, program, fuse_map_bytes)
    image = program.maps[0]
    # The input buffer is the caller's batch, never handed out again: map 0 has no role to release.
    place.features[0] = _Feature(planner.buffer("input", 0), image.height, image.width, 0, [])
    nonnegative: set[int] = set()
    for index, op in enumerate(program.operations):
        if planner.quantized is not None:
            planner.current = _op_integers(planner.quantized, op, index)
            _check_zero_borders(planner.quantized, place, op)
        if isinstance(op, Conv) and op.source.map == 0:
            if index != 0 or op.kind != "conv" or op.weight.shape[2:] != (3, 3) or op.padding != 1:
                raise EngineUnavailable("the engine reads the image with one 3x3 conv (padding 1) first")
            x = _stem(planner, op, image.channels, image.height, image.width)
            place.features[op.target.map] = x
            place.roles[op.target.map] = "stem"
        elif isinstance(op, Conv) and (op.kind == "pointwise" or _strided_1x1(op)):
            _one_by_one(planner, place, op, index)
        elif isinstance(op, Conv) and op.kind == "conv" and op.weight.shape[2:] == (3, 3) and op.padding == 1:
            _dense_3x3(planner, place, op, index)
        elif isinstance(op, SqueezeExcite):
            _squeeze_excite(planner, place, op, index)
        elif isinstance(op, Shift) and op.target.map in place.shifts:
            pass  # addressing: the convs that read its output read its input at each channel's displacement
        elif isinstance(op, Shift):
            out = program.maps[op.target.map]
            source, offsets, lines = place.shifted_read(op, range(out.channels), 1, out.height)
            buffer, stride, offset = place.target(op)
            planner.gather(source, offsets, lines, out.width, (buffer, stride, offset))
        elif isinstance(op, Conv) and op.kind == "depthwise":
            if op.weight.shape[2:] != (3, 3) or op.padding != 1 or op.residual is not None:
                raise EngineUnavailable(
                    "the engine runs 3x3 depthwise convs with padding 1, without a residual"
                )
            source = place.read(op.source)
            buffer, stride, offset = place.target(op)
            if offset != 0 or stride != _round_up(len(source.positions)):
                raise EngineUnavailable("a depthwise conv writes a map of its own")
            out = planner.depthwise(
                source,
                op.weight,
                op.bias,
                stride=op.stride,
                activation=_activation_code(op.activation),
                target=buffer,
            )
            place.wrote(op.target, out.positions)
        elif isinstance(op, Pool) and (op.kind, op.kernel, op.stride, op.padding) == ("average", 2, 2, 0):
            if op.activation != "none":
                raise EngineUnavailable("the engine pools without an activation")
            out = planner.pool(place.read(op.source), average=True, target=place.target(op), window=2)
            place.wrote(op.target, out.positions)
        elif isinstance(op, Pool):
            if (op.kernel, op.stride, op.padding) != (3, 2, 1):
                raise EngineUnavailable(
                    "the engine pools 3x3 windows with stride 2 and padding 1, or 2x2 ones"
                )
            if op.activation != "none" and not (op.activation == "relu" and op.source.map in nonnegative):
                raise EngineUnavailable("the engine pools without an activation")
            out = planner.pool(place.read(op.source), average=op.kind == "average", target=place.target(op))
            place.wrote(op.target, out.positions)
        elif isinstance(op, Copy):
            source = place.read(op.source)
            place.wrote(op.target, planner.copy(source, range(len(source.positions)), place.target(op)))
        elif isinstance(op, GlobalAverage):
            source = place.read(op.source)
            pooled = planner.buffer("pooled", source.stride)
            planner.global_average(source, pooled)
            place.features[op.target.map] = _Feature(pooled, 1, 1, source.stride, source.positions)
            place.roles[op.target.map] = "pooled"
        else:
            raise EngineUnavailable(f"the engine does not run {_describe(op)}")
        activation = getattr(op, "activation", "none")
        if activation in ("relu", "relu6") or (isinstance(op, Pool) and op.source.map in nonnegative):
            nonnegative.add(op.target.map)
        place.release(index)
    return place.read(program.output)


PRECISIONS = ("fp32", "bf16", "int8")
BFLOAT16_MISSING = (
    "bf16 needs a CPU with AVX512_BF16 (AMD Zen 4 and later, Intel Cooper Lake, Sapphire Rapids and "
    "later), which this one lacks: use fp32 or int8"
)
BFLOAT16_MAX_K = 16384
"""The most input channels of a bf16 conv: engine.c packs at least one pixel's in PACK_WORDS words."""
NEVER_FUSE = 1 << 62

FUSE_MAP_BYTES = 512 * 1024
"""A 1x1 conv's map of at least this many bytes that only the depthwise conv right after it reads is made
row by row, each row read back at once from a ring of three rows (engine.h's ExpandDepthwiseOp), rather
than written whole: a map of half a core's L2 or more leaves the cache between two whole-map operations
(MobileNet V2's expansions at 112x112 and 56x56, 1.6-4.6 MB)."""


def _buffers_read(op: Op) -> set[int]:
    _, values = fields(op)
    names = ("source", "residual", "gate")
    return {getattr(values, name) for name in names if getattr(values, name, -1) >= 0}


def _dies_here(ops: Sequence[Op], buffer: int) -> bool:
    """Whether nothing in ``ops`` reads ``buffer`` before something writes it."""
    for op in ops:
        if buffer in _buffers_read(op):
            return False
        if fields(op)[1].target == buffer:
            return True
    return True


def _fusable(ops: Sequence[Op], index: int, least_bytes: int) -> bool:
    """Whether ``ops[index]``, a 1x1 conv, and ``ops[index + 1]``, a depthwise conv, can run row by row: the
    depthwise conv reads the map the 1x1 conv writes (whole rows of it, packed, its channels from the first
    on, the depthwise conv's padding lanes past them), which is at least ``least_bytes`` and which nothing
    after them reads, and writes nothing the 1x1 conv reads."""
    (first, p), (second, d) = fields(ops[index]), fields(ops[index + 1])
    if first != "pointwise" or second != "depthwise" or d.source != p.target:
        return False
    rows = p.lines == 1 or p.line_length == d.width
    return (
        rows
        and p.lines * p.line_length == d.height * d.width
        and p.residual < 0
        and p.target_offset == 0
        and p.target_pitch == 0
        and p.groups * p.n_per_group <= d.channels
        and p.target_stride == d.source_stride
        and d.target not in _buffers_read(ops[index])
        and 4 * p.target_stride * d.height * d.width >= least_bytes
        and _dies_here(ops[index + 2 :], p.target)
    )


def _projects(ops: Sequence[Op], index: int, ints: np.ndarray) -> bool:
    """Whether the fusable pair at ``ops[index]`` can take the 1x1 conv after it along, row by row: it reads
    the depthwise conv's map (nothing after it does) as one line of packed pixels from the map's start,
    and writes nothing the pair reads."""
    if index + 2 >= len(ops) or fields(ops[index + 2])[0] != "pointwise":
        return False
    d, q = (fields(op)[1] for op in ops[index + 1 : index + 3])
    return (
        q.source == d.target
        and q.lines == 1
        and q.line_length == d.out_height * d.out_width
        and int(ints[q.line_starts]) == 0
        and q.step == d.target_stride
        and q.target_pitch == 0
        and q.target not in _buffers_read(ops[index]) | {d.target}
        and _dies_here(ops[index + 3 :], d.target)
    )


def _fuse_expansions(ops: Sequence[Op], least_bytes: int, ints: np.ndarray) -> list[Op]:
    """``ops`` with each fusable (:func:`_fusable`) 1x1 conv and depthwise conv, and the 1x1 conv after them
    where it can come along (:func:`_projects`), preceded by the operation that runs them row by row; they
    stay in the plan, so an engine without scratch runs them as before."""
    result: list[Op] = []
    index = 0
    while index < len(ops):
        if index + 1 < len(ops) and _fusable(ops, index, least_bytes):
            depthwise = fields(ops[index + 1])[1]
            project = _projects(ops, index, ints)
            ring = 3 * depthwise.width * depthwise.source_stride
            if project:
                ring += depthwise.out_width * depthwise.target_stride
            count = 3 if project else 2
            marker = make_op("expand_depthwise", ring_floats=ring, project=int(project))
            result += [marker, *ops[index : index + count]]
            index += count
        else:
            result.append(ops[index])
            index += 1
    return result


def build_engine(
    model: nn.Module,
    input_size: tuple[int, int],
    *,
    isa: str | None = None,
    threads: int | None = None,
    precision: str = "fp32",
    calibration: Iterable[torch.Tensor | np.ndarray] | None = None,
) -> Engine:
    """Plan ``model`` (in eval mode: any registered model) for ``input_size`` = (H, W) inputs, run by the
    engine compiled for ``isa`` (default: the widest this CPU has, see :func:`engine_isa`) on ``threads``
    threads (default: every core this process may use), which split each operation's work between them.
    The plan follows the model's one lowering (:func:`shufflenet.deploy.lower.lower`). Raises
    :class:`EngineUnavailable` for other networks or layers the engine does not run, ValueError for a
    model in training mode or an input size the model refuses. The engine keeps its own copy of the
    weights: later changes to ``model`` need a new plan. One call runs at a time (a lock guards the
    shared buffers). ``precision="int8"`` quantizes the network (:mod:`shufflenet.deploy.quantize`) with
    ranges measured on ``calibration`` (NCHW image batches: real images the model will see)."""
    library = load_library(isa)
    if precision == "bf16" and not library.shufflenet_engine_bf16():
        raise EngineUnavailable(BFLOAT16_MISSING)
    plan = plan_engine(
        model,
        input_size,
        lanes=library.shufflenet_engine_lanes(),
        precision=precision,
        calibration=calibration,
    )
    return Engine(library, plan, threads=usable_cores() if threads is None else threads)


def plan_engine(
    model: nn.Module,
    input_size: tuple[int, int],
    *,
    lanes: int,
    fuse_map_bytes: int | None = None,
    precision: str = "fp32",
    calibration: Iterable[torch.Tensor | np.ndarray] | None = None,
) -> Plan:
    """Plan ``model`` (eval mode) for ``input_size`` = (H, W) inputs and an engine build with vectors of
    ``lanes`` floats (the last of an :data:`ISAS` entry), without loading that build: :meth:`Plan.save`
    writes it for :func:`build_runner`'s program, on this machine or another. 1x1 convs whose maps take at
    least ``fuse_map_bytes`` run row by row with the depthwise conv that reads them (:data:`FUSE_MAP_BYTES`;
    0: wherever they can, a huge value: never; the logits are the same bit for bit). Raises as
    :func:`build_engine`."""
    if not isinstance(model, ClassifierNet):
        raise EngineUnavailable(f"the engine runs this library's models, not {type(model).__name__}")
    if not isinstance(model.get_classifier(), nn.Linear):
        raise EngineUnavailable("the engine needs a linear classifier (num_classes > 0)")
    if model.training:
        raise ValueError(
            "the engine folds BN from its running statistics, as in eval mode; call model.eval()"
        )
    height, width = input_size
    model.check_input(torch.empty(1, model.in_chans, height, width))
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    program = lower(model, input_size)
    quantized = None
    if precision == "int8":
        if calibration is None:
            raise ValueError("an int8 plan measures its ranges on real images: pass calibration batches")
        try:
            quantized = quantize_model_program(program, calibration)
        except QuantizationError as error:
            raise EngineUnavailable(str(error)) from error
    if precision == "bf16" and lanes != 16:
        raise EngineUnavailable("bf16 plans are for the engine's AVX-512 build (16-float vectors)")
    planner = _Planner(lanes, quantized, bfloat16=precision == "bf16")
    fuse_map_bytes = FUSE_MAP_BYTES if fuse_map_bytes is None else fuse_map_bytes
    if quantized is not None:  # the row-by-row run is float: no map is kept alive or placed for it
        fuse_map_bytes = NEVER_FUSE
    logits = _plan(planner, program, fuse_map_bytes)
    floats = _aligned_floats(max(planner.float_size, 8))
    if planner.floats:
        np.concatenate(planner.floats, out=floats)
    order = sorted(planner.buffer_ids, key=planner.buffer_ids.get)
    ints = np.concatenate(planner.ints) if planner.ints else np.zeros(1, np.int32)
    return Plan(
        lanes=lanes,
        ops=_fuse_expansions(planner.ops, fuse_map_bytes, ints),
        floats=floats,
        ints=ints,
        buffer_floats=[planner.buffer_sizes[role] for role in order],
        input_buffer=planner.buffer_ids["input"],
        input_shape=(model.in_chans, height, width),
        output=logits,
        quantized=quantized,
    )

"""The engine's plan layout, read from its one definition (``csrc/engine.h``): the operation codes, the
activation and pool-window codes, and ctypes structures for every operation, so the Python planner and the
C kernels cannot disagree on which field is which. :func:`check_library` compares them with what a compiled
library reports before it is given a plan."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path
from typing import Any

HEADER = Path(__file__).with_name("csrc") / "engine.h"


class AbiMismatch(RuntimeError):
    """A compiled engine whose plan layout differs from engine.h's."""


def _enum(text: str, prefix: str) -> dict[str, int]:
    return {name.lower(): int(value) for name, value in re.findall(rf"\b{prefix}_(\w+) = (\d+)", text)}


def _camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _structures(text: str) -> dict[str, type]:
    """Every ``typedef struct`` of int64_t fields, by its C name."""
    structures: dict[str, type] = {}
    for body, name in re.findall(r"typedef struct \{\n((?:    int64_t \w+;\n)+)\} (\w+);", text):
        fields = [(field, ctypes.c_int64) for field in re.findall(r"int64_t (\w+);", body)]
        structures[name] = type(name, (ctypes.Structure,), {"_fields_": fields})
    return structures


_TEXT = HEADER.read_text()
ABI_VERSION = int(re.search(r"#define SHUFFLENET_ENGINE_ABI (\d+)", _TEXT).group(1))
PLAN_MAGIC = int(re.search(r"#define SHUFFLENET_PLAN_MAGIC (0x[0-9a-f]+)LL", _TEXT).group(1), 16)
OPCODES, ACTIVATIONS, POOL_WINDOWS = _enum(_TEXT, "OP"), _enum(_TEXT, "ACT"), _enum(_TEXT, "POOL")
# Where an int8 operation's record holds each array's offset (and the record's length, "fields").
INT8_SLOTS = _enum(_TEXT, "INT8")
_ALL = _structures(_TEXT)
PlanFile = _ALL.pop("PlanFile")
# The operation structures by union member name: PointwiseOp -> "pointwise".
STRUCTURES = {_camel_to_snake(name[: -len("Op")]): structure for name, structure in _ALL.items()}
if set(OPCODES) != set(STRUCTURES):
    raise AbiMismatch(f"{HEADER.name}: opcodes {sorted(OPCODES)} but structures {sorted(STRUCTURES)}")


class _Operations(ctypes.Union):
    _fields_ = [(name, structure) for name, structure in STRUCTURES.items()]


class Op(ctypes.Structure):
    """One planned operation: its code and, under ``as_``, the fields of its kind (engine.h's ``Op``)."""

    _fields_ = [("code", ctypes.c_int64), ("as_", _Operations)]


KINDS = {code: name for name, code in OPCODES.items()}


def make_op(kind: str, **fields: int) -> Op:
    """An operation of ``kind`` (engine.h's union member name, e.g. ``"pointwise"``) with ``fields``;
    every field of the kind must be given."""
    structure = STRUCTURES[kind]
    missing = {name for name, _ in structure._fields_} - set(fields)
    if missing:
        raise TypeError(f"a {kind} operation needs {', '.join(sorted(missing))}")
    op = Op(code=OPCODES[kind])
    setattr(op.as_, kind, structure(**fields))
    return op


def make_plan_header(**values: int) -> PlanFile:
    """A saved plan's header with this layout's magic number, version and operation size."""
    return PlanFile(magic=PLAN_MAGIC, abi=ABI_VERSION, op_size=ctypes.sizeof(Op), **values)


def fields(op: Op) -> tuple[str, Any]:
    """(kind, the kind's structure) of ``op``."""
    kind = KINDS[op.code]
    return kind, getattr(op.as_, kind)


def check_library(library: ctypes.CDLL) -> None:
    """Raise :class:`AbiMismatch` unless ``library`` was built from this engine.h (same ABI version and
    operation size)."""
    library.shufflenet_engine_abi.restype = ctypes.c_int64
    library.shufflenet_engine_abi.argtypes = [ctypes.POINTER(ctypes.c_int64)]
    size = ctypes.c_int64()
    version = library.shufflenet_engine_abi(ctypes.byref(size))
    if version != ABI_VERSION or size.value != ctypes.sizeof(Op):
        raise AbiMismatch(
            f"the engine library has plan layout v{version} ({size.value}-byte operations), this package "
            f"v{ABI_VERSION} ({ctypes.sizeof(Op)} bytes); delete the cached build to recompile it"
        )

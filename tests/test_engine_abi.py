"""The engine's plan layout: one definition (engine.h) read by Python and C alike, checked at load."""

import ctypes
import shutil
import subprocess

import pytest

from shufflenet.deploy import engine_abi
from shufflenet.deploy.engine_abi import (
    ABI_VERSION,
    HEADER,
    OPCODES,
    STRUCTURES,
    AbiMismatch,
    Op,
    check_library,
    fields,
    make_op,
)


def test_every_opcode_has_its_structure_and_codes_are_distinct():
    assert set(OPCODES) == set(STRUCTURES) >= {"pointwise", "depthwise", "pool", "copy", "scale"}
    assert len(set(OPCODES.values())) == len(OPCODES)
    assert engine_abi.ACTIVATIONS == {"none": 0, "relu": 1, "relu6": 2}


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_python_structures_match_the_c_compilers_layout(tmp_path):
    """Every field's offset and every structure's size as the C compiler lays out engine.h."""
    lines = [f'#include "{HEADER}"', "#include <stddef.h>", "#include <stdio.h>", "int main(void) {"]
    expected = []
    for kind, structure in STRUCTURES.items():
        c_name = structure.__name__
        lines.append(f'printf("%zu\\n", sizeof({c_name}));')
        expected.append(ctypes.sizeof(structure))
        for name, _ in structure._fields_:
            lines.append(f'printf("%zu\\n", offsetof({c_name}, {name}));')
            expected.append(getattr(structure, name).offset)
        lines.append(f'printf("%zu\\n", offsetof(Op, as.{kind}));')
        expected.append(Op.as_.offset)
    lines += ['printf("%zu\\n", sizeof(Op));', "return 0; }"]
    expected.append(ctypes.sizeof(Op))
    source = tmp_path / "layout.c"
    source.write_text("\n".join(lines))
    subprocess.run(["cc", str(source), "-o", str(tmp_path / "layout")], check=True)
    printed = subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True, check=True).stdout
    assert [int(value) for value in printed.split()] == expected


def test_make_op_sets_the_code_and_names_missing_fields():
    op = make_op(
        "copy",
        source=1,
        source_stride=8,
        pixels=49,
        target=2,
        target_stride=16,
        runs=5,
        run_count=2,
        value_bytes=4,
    )
    kind, copy = fields(op)
    assert (kind, op.code, copy.pixels, copy.run_count) == ("copy", OPCODES["copy"], 49, 2)
    with pytest.raises(TypeError, match="run_count, runs"):
        make_op("copy", source=1, source_stride=8, pixels=49, target=2, target_stride=16)


class _FakeLibrary:
    """Stands in for a compiled engine built from another engine.h."""

    def __init__(self, version: int, size: int) -> None:
        def abi(size_out):
            ctypes.cast(size_out, ctypes.POINTER(ctypes.c_int64)).contents.value = size
            return version

        self.shufflenet_engine_abi = abi  # a function takes restype/argtypes attributes as ctypes' do


@pytest.mark.parametrize(
    ("version", "size"), [(ABI_VERSION - 1, ctypes.sizeof(Op)), (ABI_VERSION, ctypes.sizeof(Op) + 8)]
)
def test_a_library_of_another_layout_is_refused(version, size):
    with pytest.raises(AbiMismatch, match="delete the cached build"):
        check_library(_FakeLibrary(version, size))
    check_library(_FakeLibrary(ABI_VERSION, ctypes.sizeof(Op)))

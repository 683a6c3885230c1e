"""The single-core multiply-add ceilings of this CPU, to read latency figures against: how many multiply-adds
per second one core can retire (12 independent chains, registers only) in fp32 FMAs (256-bit, and 512-bit
where the CPU has AVX-512) and, where the CPU has them, in the reduced-precision dot products an int8 or
bf16 engine would use (AVX512_BF16's vdpbf16ps, AVX512_VNNI's and AVX-VNNI's vpdpbusd, AVX2's
vpmaddubsw + vpmaddwd + vpaddd), beside a large fp32 matrix product in PyTorch. A 1x1 convolution cannot
beat the widest chain figure of its precision; the matrix product is what a tuned fp32 GEMM gets. Each
figure is the best of 5 interleaved rounds of every probe (a shared VM's speed moves between minutes).

    python benchmarks/cpu_peak.py [--output benchmarks/results/<cpu>]

Needs a C compiler (cc) and an x86-64 CPU with AVX2 and FMA.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from shufflenet._system import cpu_info
from shufflenet.bench.report import environment, environment_markdown, script_command, write_record

# Each probe: the accumulator type, its start, the operand and one chain step with its multiply-adds. The
# integer steps are written in assembly: the compiler knows integer addition is associative and would
# otherwise sum their chains in fewer instructions than they name.
PROBE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#if defined(FP32_512)
typedef __m512 acc_t;
typedef __m512 operand_t;
#define START(i) _mm512_set1_ps((float)(i))
#define OPERAND _mm512_set1_ps(0.999999f)
#define STEP(a, x) _mm512_fmadd_ps(a, x, x)
#define MACS 16
#elif defined(BF16_512)
typedef __m512 acc_t;
typedef __m512bh operand_t;
#define START(i) _mm512_set1_ps((float)(i))
#define OPERAND (__m512bh)_mm512_set1_epi16(0x3380)
#define STEP(a, x) _mm512_dpbf16_ps(a, x, x)
#define MACS 32
#elif defined(VNNI_512)
typedef __m512i acc_t;
typedef __m512i operand_t;
#define START(i) _mm512_set1_epi32(i)
#define OPERAND _mm512_set1_epi8(3)
#define STEP(a, x) ({ acc_t r = a; __asm__("vpdpbusd %1, %1, %0" : "+v"(r) : "v"(x)); r; })
#define MACS 64
#elif defined(VNNI_256)
typedef __m256i acc_t;
typedef __m256i operand_t;
#define START(i) _mm256_set1_epi32(i)
#define OPERAND _mm256_set1_epi8(3)
#define STEP(a, x) ({ acc_t r = a; __asm__("%{vex%} vpdpbusd %1, %1, %0" : "+x"(r) : "x"(x)); r; })
#define MACS 32
#elif defined(INT8_AVX2)
typedef __m256i acc_t;
typedef __m256i operand_t;
#define START(i) _mm256_set1_epi32(i)
#define OPERAND _mm256_set1_epi8(3)
#define STEP(a, x)                                                                                    \
    ({                                                                                                \
        acc_t r = a, t;                                                                               \
        __asm__("vpmaddubsw %2, %2, %1\n\tvpmaddwd %2, %1, %1\n\tvpaddd %1, %0, %0" : "+x"(r), "=&x"(t) \
                : "x"(x));                                                                            \
        r;                                                                                            \
    })
#define MACS 32
#else
typedef __m256 acc_t;
typedef __m256 operand_t;
#define START(i) _mm256_set1_ps((float)(i))
#define OPERAND _mm256_set1_ps(0.999999f)
#define STEP(a, x) _mm256_fmadd_ps(a, x, x)
#define MACS 8
#endif
int main(void) {
    acc_t a[12];
    operand_t x = OPERAND;
    for (int i = 0; i < 12; i++) a[i] = START(i);
    const long iterations = 100000000;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long n = 0; n < iterations; n++) {
        __asm__ volatile("" : "+v"(x));
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = STEP(a[i], x);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    const double seconds = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
    double sink = 0;
    for (int i = 0; i < 12; i++) {
        float first; /* through memcpy: a pointer cast would let the compiler drop the integer chains */
        memcpy(&first, &a[i], sizeof first);
        sink += first;
    }
    printf("%.3f %g\n", iterations * 12.0 * MACS / seconds / 1e9, sink);
    return 0;
}
"""


@dataclass(frozen=True)
class Probe:
    """One chain of multiply-add instructions: the compiler flags that build it, the CPU flags it needs."""

    name: str
    label: str
    compiler_flags: tuple[str, ...]
    cpu_flags: frozenset[str]


PROBES = (
    Probe(
        "fma_chains_256", "fp32, 256-bit FMA", ("-mavx2", "-mfma", "-DFP32_256"), frozenset({"avx2", "fma"})
    ),
    Probe("fma_chains_512", "fp32, 512-bit FMA", ("-mavx512f", "-DFP32_512"), frozenset({"avx512f"})),
    Probe(
        "bf16_dot_512",
        "bf16 pairs into fp32, 512-bit vdpbf16ps (AVX512_BF16)",
        ("-mavx512f", "-mavx512bf16", "-DBF16_512"),
        frozenset({"avx512_bf16"}),
    ),
    Probe(
        "int8_dot_512",
        "u8 x s8 quads into int32, 512-bit vpdpbusd (AVX512_VNNI)",
        ("-mavx512f", "-mavx512vnni", "-DVNNI_512"),
        frozenset({"avx512_vnni"}),
    ),
    Probe(
        "int8_dot_256",
        "u8 x s8 quads into int32, 256-bit vpdpbusd (AVX-VNNI)",
        ("-mavx2", "-mavxvnni", "-DVNNI_256"),
        frozenset({"avx_vnni"}),
    ),
    Probe(
        "int8_avx2",
        "u8 x s8 into int32, 256-bit vpmaddubsw + vpmaddwd + vpaddd (AVX2)",
        ("-mavx2", "-DINT8_AVX2"),
        frozenset({"avx2"}),
    ),
)


ROUNDS = 5
"""Rounds of every probe, interleaved: a shared machine's speed moves between minutes (a neighbour on the
same core), and a ceiling is the best any round saw."""


def build_probe(probe: Probe, folder: Path) -> Path | str:
    """``probe`` compiled into ``folder``, or why it could not be (a compiler or assembler without the
    instructions)."""
    compiler = shutil.which("cc")
    if compiler is None:
        raise SystemExit("cpu_peak: needs a C compiler (cc)")
    source, binary = folder / f"{probe.name}.c", folder / probe.name
    source.write_text(PROBE)
    # Fully unrolled, the 12 accumulators live in registers (a loop over the array would keep them in
    # memory and measure store-to-load latency instead).
    built = subprocess.run(
        [compiler, "-O2", *probe.compiler_flags, str(source), "-o", str(binary)],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        return f"not built: {(built.stderr.strip().splitlines() or ['?'])[-1]}"
    return binary


def chain_peaks_gmacs(probes: list[Probe], rounds: int = ROUNDS) -> dict[Probe, float | str]:
    """Billions of multiply-adds per second from each probe's instruction chains on one core, the best of
    ``rounds`` interleaved rounds, or why it could not be measured."""
    with tempfile.TemporaryDirectory() as folder:
        binaries = {probe: build_probe(probe, Path(folder)) for probe in probes}
        results: dict[Probe, float | str] = {
            probe: binary if isinstance(binary, str) else 0.0 for probe, binary in binaries.items()
        }
        for _ in range(rounds):
            for probe, binary in binaries.items():
                if isinstance(results[probe], str):  # not built, or failed in an earlier round
                    continue
                run = subprocess.run([str(binary)], capture_output=True, text=True)
                results[probe] = (
                    max(results[probe], float(run.stdout.split()[0]))
                    if run.returncode == 0
                    else f"the probe failed (exit status {run.returncode})"
                )
    return results


def cpu_flags() -> set[str]:
    return set(cpu_info().get("flags", "").split())


def matmul_gmacs(size: int = 1024, repeats: int = 10) -> float:
    """Billions of multiply-adds per second of a size^3 fp32 matrix product in PyTorch on one thread."""
    torch.set_num_threads(1)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return size**3 / best / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, help="also write cpu_peak.md/.csv/.json here")
    args = parser.parse_args(argv)
    flags = cpu_flags()
    measured = chain_peaks_gmacs([probe for probe in PROBES if probe.cpu_flags <= flags])
    peaks = {probe: gmacs for probe, gmacs in measured.items() if isinstance(gmacs, float)}
    fp32 = max(gmacs for probe, gmacs in peaks.items() if probe.name.startswith("fma_"))
    gemm = matmul_gmacs()
    env = environment(script_command(argv))
    body = "".join(
        f"- {probe.label} chains, registers only: **{gmacs:.1f} GMAC/s** ({gmacs / fp32:.1f}x fp32)\n"
        if isinstance(gmacs, float)
        else f"- {probe.label}: {gmacs}\n"
        for probe, gmacs in measured.items()
    )
    body += (
        f"- PyTorch 1024^3 fp32 matrix product, 1 thread: **{gemm:.1f} GMAC/s** "
        f"({gemm / fp32:.0%} of fp32's best)\n"
    )
    title = "Single-core multiply-add ceilings"
    print(f"# {title}\n\n{environment_markdown(env)}\n\n{body}")
    if args.output:
        rows = [{"probe": probe.name, "gmacs": gmacs} for probe, gmacs in peaks.items()]
        rows.append({"probe": "torch_matmul_1024", "gmacs": gemm})
        for path in write_record(args.output, "cpu_peak", title, body, rows, env).values():
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The single-core FMA ceiling of this CPU, to read latency figures against: how many fp32 multiply-adds per
second one core can retire (12 independent FMA chains, registers only; 256-bit, and 512-bit where the CPU
has AVX-512), beside a large matrix product in PyTorch. A 1x1 convolution cannot beat the widest chain
figure; the matrix product is what a tuned GEMM gets.

    python benchmarks/cpu_peak.py [--output benchmarks/results]

Needs a C compiler (cc) and an x86-64 CPU with AVX2 and FMA.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from shufflenet._system import cpu_info
from shufflenet.bench.report import environment, environment_markdown, write_record

PROBE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#ifdef WIDE
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#endif
int main(void) {
    vec a[12];
    const vec b = SET1(0.999999f), c = SET1(1e-7f);
    for (int i = 0; i < 12; i++) a[i] = SET1((float)i);
    const long iterations = 100000000;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long n = 0; n < iterations; n++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = FMA(a[i], b, c);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    const double seconds = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
    float sink = 0;
    for (int i = 0; i < 12; i++) sink += a[i][0];
    printf("%.3f %g\n", iterations * 12.0 * LANES / seconds / 1e9, sink);
    return 0;
}
"""
# Vector width in bits -> (compiler flags, CPU flags needed).
WIDTHS = {256: (["-mavx2", "-mfma"], {"avx2", "fma"}), 512: (["-mavx512f", "-DWIDE"], {"avx512f"})}


def fma_peak_gmacs(bits: int = 256) -> float:
    """Billions of fp32 multiply-adds per second from ``bits``-wide FMAs on one core."""
    compiler = shutil.which("cc")
    if compiler is None:
        raise SystemExit("cpu_peak: needs a C compiler (cc)")
    with tempfile.TemporaryDirectory() as folder:
        source, binary = Path(folder) / "probe.c", Path(folder) / "probe"
        source.write_text(PROBE)
        # Fully unrolled, the 12 accumulators live in registers (a loop over the array would keep them in
        # memory and measure store-to-load latency instead).
        flags = WIDTHS[bits][0]
        subprocess.run([compiler, "-O2", *flags, str(source), "-o", str(binary)], check=True)
        runs = [float(subprocess.run([str(binary)], capture_output=True, text=True).stdout.split()[0])]
        runs += [float(subprocess.run([str(binary)], capture_output=True, text=True).stdout.split()[0])]
    return max(runs)


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
    peaks = {bits: fma_peak_gmacs(bits) for bits, (_, needs) in WIDTHS.items() if needs <= flags}
    peak, gemm = max(peaks.values()), matmul_gmacs()
    env = environment([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])
    body = "".join(
        f"- {bits}-bit FMA chains, registers only: **{gmacs:.1f} GMAC/s**\n" for bits, gmacs in peaks.items()
    )
    body += (
        f"- PyTorch 1024^3 matrix product, 1 thread: **{gemm:.1f} GMAC/s** ({gemm / peak:.0%} of the best)\n"
    )
    title = "Single-core fp32 multiply-add ceiling"
    print(f"# {title}\n\n{environment_markdown(env)}\n\n{body}")
    if args.output:
        rows = [{"probe": f"fma_chains_{bits}", "gmacs": gmacs} for bits, gmacs in peaks.items()]
        rows.append({"probe": "torch_matmul_1024", "gmacs": gemm})
        for path in write_record(args.output, "cpu_peak", title, body, rows, env).values():
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

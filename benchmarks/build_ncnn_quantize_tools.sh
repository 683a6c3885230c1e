#!/usr/bin/env bash
# Builds ncnn's post-training int8 quantization tools, ncnn2table (calibration table) and ncnn2int8
# (int8 param/bin), for the ncnn_int8 cell of benchmarks/peer_latency.py: the ncnn wheel on PyPI ships
# neither, and its sdist has no tools/ directory.
#
#   benchmarks/build_ncnn_quantize_tools.sh NCNN_SOURCE [OUTPUT]
#
# NCNN_SOURCE: a checkout of https://github.com/Tencent/ncnn, best at the installed wheel's release
# (CMakeLists.txt, cmake/, src/, tools/ and tests/prng.h are read). OUTPUT (default .cache/ncnn-tools in
# the repository, git-ignored): the tools land in OUTPUT/bin, the CMake build in OUTPUT/build, the source
# commit and flags in OUTPUT/SOURCE.txt. The ncnn_int8 cell finds them there, in $NCNN_TOOLS or on PATH.
#
# CPU only, static libncnn at the SSE2 baseline (the tools calibrate and rewrite files, so their speed is
# no concern; the int8 files they write are run by the wheel's ncnn), ncnn's simpleocv instead of OpenCV
# (the cell calibrates on .npy tensors, never images). JOBS (default 2) parallel compiles, at nice 19.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || $1 == -h || $1 == --help ]]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
source_dir=$(cd "$1" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
output=${2:-$repo/.cache/ncnn-tools}
jobs=${JOBS:-2}
[[ -f $source_dir/tools/quantize/ncnn2table.cpp ]] || {
    echo "$source_dir is not an ncnn source tree (no tools/quantize/ncnn2table.cpp)" >&2
    exit 1
}

flags=(
    -G "Unix Makefiles"
    -DCMAKE_BUILD_TYPE=Release
    -DNCNN_VULKAN=OFF
    -DNCNN_SHARED_LIB=OFF
    -DNCNN_INSTALL_SDK=OFF
    -DNCNN_BUILD_TOOLS=ON
    -DNCNN_BUILD_EXAMPLES=OFF
    -DNCNN_BUILD_BENCHMARK=OFF
    -DNCNN_BUILD_TESTS=OFF
    -DNCNN_PYTHON=OFF
    -DNCNN_INT8=ON
    -DNCNN_BF16=OFF
    -DNCNN_SIMPLEOCV=ON
    -DNCNN_RUNTIME_CPU=OFF
    -DNCNN_AVX=OFF
)
mkdir -p "$output/build" "$output/bin"
output=$(cd "$output" && pwd)
cmake -S "$source_dir" -B "$output/build" "${flags[@]}" >"$output/build/cmake.log" || {
    tail -n 20 "$output/build/cmake.log" >&2
    exit 1
}
nice -n 19 make -C "$output/build" -j"$jobs" ncnn2table ncnn2int8
cp "$output/build/tools/quantize/ncnn2table" "$output/build/tools/quantize/ncnn2int8" "$output/bin/"

commit=$(git -C "$source_dir" rev-parse HEAD 2>/dev/null || echo "unknown (not a git checkout)")
{
    echo "ncnn source: $source_dir"
    echo "commit: $commit"
    echo "cmake flags: ${flags[*]}"
} >"$output/SOURCE.txt"
echo "built $output/bin/ncnn2table and $output/bin/ncnn2int8 (ncnn $commit)"

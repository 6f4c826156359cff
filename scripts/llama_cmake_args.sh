#!/usr/bin/env bash
# Prints CMAKE_ARGS for building llama-cpp-python for this x86 CPU without AMX.
#
# llama.cpp's default build is -march=native, which turns on every instruction the CPU
# advertises. Some virtual machines advertise AMX while its tile instructions fault: every
# matrix product then dies with SIGILL ("Illegal instruction", exit 132) on the first prompt.
# This builds for the CPU's own vector extensions (AVX2, AVX-512 and their dot-product
# variants, read from /proc/cpuinfo) and leaves AMX out, which costs nothing on a CPU without it.
# Off x86 Linux it prints only the base arguments (a native build).
#   CMAKE_ARGS="$(scripts/llama_cmake_args.sh)" pip install -e ".[test]"
set -euo pipefail
base="-DLLAVA_BUILD=OFF"
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
if [[ "$(uname -m)" != x86_64 || " $flags " != *" amx_tile "* ]]; then
    echo "$base"  # no AMX to avoid: the native build is the fastest
    exit 0
fi
args="$base -DGGML_NATIVE=OFF"
has() { [[ " $flags " == *" $1 "* ]]; }
for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI avx512f:AVX512 \
            avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
    if has "${pair%%:*}"; then args="$args -DGGML_${pair#*:}=ON"; else args="$args -DGGML_${pair#*:}=OFF"; fi
done
echo "$args"

"""CMAKE_ARGS for building llama-cpp-python's ggml: every SIMD extension this CPU lists, except AMX.

A native build (-march=native) compiles AMX tile kernels wherever /proc/cpuinfo lists amx_*; on a
VM whose hypervisor lists AMX without enabling it, the first prompt dies with an illegal
instruction (`tilezero`, seen on a 2-core Xeon VM on 2026-11-29). So the build names each
extension itself, from the CPU's own flags, and leaves AMX out. `make bench-peers` uses it.
"""

from pathlib import Path

GGML_OPTIONS = {  # ggml CMake option -> /proc/cpuinfo flag
    "GGML_AVX": "avx", "GGML_AVX2": "avx2", "GGML_FMA": "fma", "GGML_F16C": "f16c", "GGML_BMI2": "bmi2",
    "GGML_AVX_VNNI": "avx_vnni", "GGML_AVX512": "avx512f", "GGML_AVX512_VBMI": "avx512vbmi",
    "GGML_AVX512_VNNI": "avx512_vnni", "GGML_AVX512_BF16": "avx512_bf16",
}

flags = set()
for line in Path("/proc/cpuinfo").read_text().splitlines():
    if line.startswith("flags"):
        flags = set(line.split(":", 1)[1].split())
        break
args = ["-DGGML_NATIVE=OFF"] + [f"-D{option}={'ON' if flag in flags else 'OFF'}" for option, flag in GGML_OPTIONS.items()]
print(" ".join(args + ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]))

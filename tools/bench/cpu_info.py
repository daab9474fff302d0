"""The CPU in benchmark headers: model name, instruction-set level and the flags that pick kernels."""

import platform

FLAGS = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]


def describe():
    """(model, level, flags): level is AMX, AVX-512, AVX2 or baseline x86-64; flags the present FLAGS."""
    info = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), platform.machine())
    family = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("cpu family")), None)
    number = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model\t") or l.startswith("model ")), None)
    if family and number:
        model += f" (family {family} model {number})"
    flags = set(next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), []))
    level = "AMX" if "amx_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "baseline x86-64"
    return model, level, ", ".join(f for f in FLAGS if f in flags)

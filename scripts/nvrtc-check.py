#!/usr/bin/env python3
"""Compiles the project's CUDA kernel sources with NVRTC here, on a machine without a GPU.

The kernels are CUDA C strings in Rust files (`const SOURCE: &str = r#"..."#;`) that candle's
NVRTC compiles at run time on the GPU machine, where a compile error costs a command of device
time. NVRTC is stricter than nvcc (no math.h: `INFINITY` is undefined, say), so this runs the
same compiler: libnvrtc from PyPI (`nvidia-cuda-nvrtc`, installed into target/cuda-venv by
`scripts/build-cuda.sh`), through ctypes. A source that wants `#define`s before it (the scan's
`N_STATE`) gets them from DEFINES below.

    python3 scripts/nvrtc-check.py            # every kernel source; exit 1 on an error
"""

import ctypes
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ["crates/itera-model/src/scan/cuda.rs", "crates/itera-model/src/fused/cuda.rs"]
# Text put before a source (the values the Rust side defines at run time).
DEFINES = {"crates/itera-model/src/scan/cuda.rs": "#define N_STATE 16\n"}


def nvrtc():
    found = glob.glob(os.path.join(ROOT, "target/cuda-venv/lib/python3*/site-packages/nvidia/cu13/lib/libnvrtc.so.13"))
    if not found:
        sys.exit("error: no libnvrtc.so.13 under target/cuda-venv (run scripts/build-cuda.sh first, then "
                 "target/cuda-venv/bin/pip install nvidia-cuda-nvrtc==13.0.88)")
    # NVRTC dlopens its builtins by name: load them first from the same folder.
    for builtins in glob.glob(os.path.join(os.path.dirname(found[0]), "libnvrtc-builtins.so.*")):
        ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(found[0])


def compile_source(lib, name, src, arch="compute_90"):
    prog = ctypes.c_void_p()
    check = lambda rc, what: rc == 0 or sys.exit(f"error: {what} returned {rc}")
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None), "nvrtcCreateProgram")
    opts = [f"--gpu-architecture={arch}".encode()]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace").strip()


def main():
    lib = nvrtc()
    failed = 0
    for rel in FILES:
        text = open(os.path.join(ROOT, rel)).read()
        sources = re.findall(r'const SOURCE: &str = r#"(.*?)"#;', text, re.S)
        if not sources:
            sys.exit(f"error: no `const SOURCE` kernel text in {rel}")
        for src in sources:
            rc, log = compile_source(lib, os.path.basename(rel) + ".cu", DEFINES.get(rel, "") + src)
            print(f"{rel}: {'ok' if rc == 0 else 'FAILED'}")
            if log:
                print(log)
            failed += rc != 0
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

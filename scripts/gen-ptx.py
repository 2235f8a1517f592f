#!/usr/bin/env python3
"""Compile kernels/*.cu to kernels/ptx/*.ptx with NVRTC 12.4 (no GPU needed).

    python3 scripts/gen-ptx.py          # regenerate the committed PTX
    python3 scripts/gen-ptx.py --check  # exit 1 if the committed PTX is stale

NVRTC comes from the pip wheel nvidia-cuda-nvrtc-cu12==12.4.127 (installed on
demand). Version 12.4 matters: it emits PTX ISA 8.4, which every CUDA 12.4+
driver loads; newer compilers emit ISA versions older drivers reject. The
output is a pure function of the sources, so --check can diff it byte for byte.
"""

import argparse
import ctypes
import difflib
import glob
import os
import re
import subprocess
import sys
import tempfile

WHEEL = "nvidia-cuda-nvrtc-cu12==12.4.127"
WANT_VERSION = (12, 4)
ARCH = "compute_70"
OPTIONS = [f"--gpu-architecture={ARCH}", "--std=c++17"]
# A source whose first line is "// gen-ptx: compute_NN" needs a newer GPU (the
# Rust side loads its module only there); every other source targets ARCH.
ARCH_LINE = re.compile(r"^// gen-ptx: (compute_\d+)\s*$")
MAX_PTX_ISA = (8, 4)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC_DIR = os.path.join(ROOT, "kernels")
PTX_DIR = os.path.join(SRC_DIR, "ptx")
GENERATOR_LINE = f"NVRTC 12.4 ({WHEEL}), {' '.join(OPTIONS)} (or a source's own compute_NN)"


# Where the wheel is installed when the running Python has no (or another)
# NVRTC: a private --target directory, so no system site-packages is touched.
CACHE_DIR = os.environ.get("CUDANN_NVRTC_DIR",
                           os.path.join(os.path.expanduser("~"), ".cache", "cudann", "nvrtc-12.4.127"))


def candidate_libs():
    """libnvrtc.so.12 paths to try: the importable wheel, then the private install."""
    paths = []
    try:
        import nvidia.cuda_nvrtc as pkg  # a namespace package: use __path__

        paths += [os.path.join(base, "lib", "libnvrtc.so.12") for base in pkg.__path__]
    except ImportError:
        pass
    paths.append(os.path.join(CACHE_DIR, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.12"))
    return [p for p in paths if os.path.exists(p)]


def open_nvrtc(path):
    """The library at path if it is NVRTC 12.4, else None."""
    lib = ctypes.CDLL(path)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    if (major.value, minor.value) == WANT_VERSION:
        return lib
    print(f"gen-ptx: skipping {path}: NVRTC {major.value}.{minor.value}, need 12.4", file=sys.stderr)
    return None


def load_nvrtc():
    for path in candidate_libs():
        lib = open_nvrtc(path)
        if lib is not None:
            return lib
    print(f"gen-ptx: installing {WHEEL} into {CACHE_DIR}", file=sys.stderr)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade",
                           "--target", CACHE_DIR, WHEEL])
    path = os.path.join(CACHE_DIR, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.12")
    lib = open_nvrtc(path) if os.path.exists(path) else None
    if lib is None:
        sys.exit(f"gen-ptx: {WHEEL} installed but no NVRTC 12.4 at {path}")
    return lib


def check(lib, status, what):
    if status != 0:
        raise RuntimeError(f"{what}: {lib.nvrtcGetErrorString(status).decode()}")


def read_headers():
    """kernels/*.cuh, handed to NVRTC in memory (no include path, so no absolute
    path can leak into the output)."""
    headers = sorted(glob.glob(os.path.join(SRC_DIR, "*.cuh")))
    names = [os.path.basename(h).encode() for h in headers]
    texts = []
    for h in headers:
        with open(h, "rb") as f:
            texts.append(f.read())
    return (ctypes.c_char_p * len(texts))(*texts), (ctypes.c_char_p * len(names))(*names), len(texts)


def compile_one(lib, cu_path):
    """PTX text of one .cu file; raises with the compiler log on error."""
    name = os.path.basename(cu_path)
    with open(cu_path, "rb") as f:
        source = f.read()
    wanted = ARCH_LINE.match(source.decode().split("\n", 1)[0])
    arch = wanted.group(1) if wanted else ARCH
    options = [f"--gpu-architecture={arch}"] + OPTIONS[1:]
    texts, names, count = read_headers()
    prog = ctypes.c_void_p()
    check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source, name.encode(), count, texts, names),
          "nvrtcCreateProgram")
    try:
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        status = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        check(lib, lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        log = ctypes.create_string_buffer(size.value)
        check(lib, lib.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        log = log.value.decode(errors="replace").strip()
        if status != 0:
            raise RuntimeError(f"{name}: compilation failed\n{log}")
        if log:  # warnings are errors: the kernels should compile cleanly
            raise RuntimeError(f"{name}: compiler warnings\n{log}")
        check(lib, lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
        ptx = ctypes.create_string_buffer(size.value)
        check(lib, lib.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
        text = ptx.value.decode()  # .value stops at the trailing NUL
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    validate(name, text, "sm_" + arch.split("_")[1])
    return text


def validate(name, ptx, target):
    """The PTX must load on CUDA 12.4+ drivers and target the architecture asked for."""
    m = re.search(r"^\.version (\d+)\.(\d+)$", ptx, re.M)
    if not m or (int(m.group(1)), int(m.group(2))) > MAX_PTX_ISA:
        raise RuntimeError(f"{name}: PTX ISA {m and m.group(0)} exceeds {MAX_PTX_ISA}")
    if not re.search(rf"^\.target {target}$", ptx, re.M):
        raise RuntimeError(f"{name}: PTX .target is not {target}")
    if not re.search(r"^\.visible \.entry ", ptx, re.M):
        raise RuntimeError(f"{name}: no kernel entry point")


def generate(out_dir):
    """Write every kernels/<name>.ptx and GENERATOR into out_dir; returns the file names."""
    lib = load_nvrtc()
    sources = sorted(glob.glob(os.path.join(SRC_DIR, "*.cu")))
    if not sources:
        sys.exit("gen-ptx: no kernels/*.cu")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for cu in sources:
        name = os.path.splitext(os.path.basename(cu))[0] + ".ptx"
        with open(os.path.join(out_dir, name), "w", newline="\n") as f:
            f.write(compile_one(lib, cu))
        written.append(name)
    with open(os.path.join(out_dir, "GENERATOR"), "w", newline="\n") as f:
        f.write(GENERATOR_LINE + "\n")
    written.append("GENERATOR")
    return written


def compare(fresh_dir):
    """Number of differences between fresh_dir and the committed PTX_DIR, printed."""
    fresh = set(os.listdir(fresh_dir))
    committed = set(os.listdir(PTX_DIR)) if os.path.isdir(PTX_DIR) else set()
    problems = 0
    for name in sorted(fresh - committed):
        print(f"missing: kernels/ptx/{name} (not generated yet)")
        problems += 1
    for name in sorted(committed - fresh):
        print(f"extra:   kernels/ptx/{name} (no kernels/*.cu makes it)")
        problems += 1
    for name in sorted(fresh & committed):
        with open(os.path.join(fresh_dir, name), "rb") as f:
            new = f.read()
        with open(os.path.join(PTX_DIR, name), "rb") as f:
            old = f.read()
        if new != old:  # byte for byte; the diff below is only the summary
            old, new = old.decode(errors="replace").splitlines(), new.decode(errors="replace").splitlines()
            diff = list(difflib.unified_diff(old, new, f"committed/{name}", f"fresh/{name}", lineterm="", n=1))
            print(f"stale:   kernels/ptx/{name} ({len(diff)} diff lines); first lines:")
            print("\n".join("    " + line for line in diff[:12]))
            problems += 1
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="verify kernels/ptx is up to date; write nothing")
    args = ap.parse_args()
    try:
        if args.check:
            with tempfile.TemporaryDirectory() as tmp:
                generate(tmp)
                problems = compare(tmp)
            if problems:
                print(f"gen-ptx --check: {problems} file(s) differ; run python3 scripts/gen-ptx.py")
                return 1
            print("gen-ptx --check: kernels/ptx is up to date")
            return 0
        written = generate(PTX_DIR)
        # Drop PTX whose source is gone, so the directory mirrors kernels/*.cu.
        for name in os.listdir(PTX_DIR):
            if name not in written:
                os.remove(os.path.join(PTX_DIR, name))
        print(f"gen-ptx: wrote {len(written)} files to kernels/ptx ({GENERATOR_LINE})")
        return 0
    except RuntimeError as e:
        print(f"gen-ptx: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Builds the cudann package: the crate one level up (../Cargo.toml) as a cdylib
through setuptools-rust, bundled as cudann/libcudann.so, with the header
../include/cudann.h copied to cudann/cudann.h (the ctypes prototypes are parsed
from it at import). Cargo honours CARGO_TARGET_DIR; the build is --release.

The library is called through ctypes, not the Python C API, so the wheel is
tagged py3-none-<platform>: one wheel serves every Python 3.
"""
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools_rust import Binding, RustExtension
from setuptools_rust.build import build_rust

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "..", "include", "cudann.h")

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1: the wheel package's
    from wheel.bdist_wheel import bdist_wheel


class BuildRust(build_rust):
    """Names the bundled cdylib libcudann.so rather than an extension-module name
    (libcudann.cpython-311-x86_64-linux-gnu.so): it is a plain C library."""

    def get_dylib_ext_path(self, ext, target_fname):
        path = super().get_dylib_ext_path(ext, target_fname)
        return os.path.join(os.path.dirname(path), "libcudann.so")


class BuildPy(build_py):
    """Copies the C header into the package (built tree, and the source tree for
    in-place/editable builds)."""

    def run(self):
        super().run()
        targets = [os.path.join(self.build_lib, "cudann")]
        if getattr(self, "editable_mode", False) or self.distribution.get_command_obj("build_ext").inplace:
            targets.append(os.path.join(HERE, "cudann"))
        for target in targets:
            os.makedirs(target, exist_ok=True)
            shutil.copyfile(HEADER, os.path.join(target, "cudann.h"))


class BdistWheel(bdist_wheel):
    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(
    rust_extensions=[
        RustExtension("cudann.libcudann", path=os.path.join("..", "Cargo.toml"), binding=Binding.NoBinding,
                      debug=False, py_limited_api=False),
    ],
    cmdclass={"build_rust": BuildRust, "build_py": BuildPy, "bdist_wheel": BdistWheel},
)

"""Build of the native backend ``fastxai._C`` with CMake; metadata lives in pyproject.toml.

    pip install --no-build-isolation -e .      # editable: fastxai/_C*.so next to the sources

Environment variables:

- ``FASTXAI_BUILD_NATIVE=0``: skip the extension (pure-Python install: reference/Triton backends).
- ``FASTXAI_REQUIRE_NATIVE=1``: a failed native build is an error (default: warn, install without it).
- ``FASTXAI_WITH_CUDA=0`` / ``=1``: never / always build the CUDA kernels (default: when torch is a CUDA
  build and nvcc of the same major version is found; nvcc from ``CUDACXX``, ``CUDA_HOME`` or ``PATH``).
- ``TORCH_CUDA_ARCH_LIST`` (e.g. ``"8.0;9.0"``): CUDA architectures, default 8.0 and 9.0.
- ``CMAKE_ARGS``: extra arguments for the CMake configure step; ``CMAKE_GENERATOR`` to override Ninja.
- ``MAX_JOBS``: parallel compile jobs (default: ``os.cpu_count()``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in ("0", "false", "off", "no")


class CMakeExtension(Extension):
    """An extension module built by the CMake project in ``source_dir``."""

    def __init__(self, name: str, source_dir: Path) -> None:
        super().__init__(name, sources=[])
        self.source_dir = source_dir


def _find_nvcc() -> str | None:
    candidates = [os.environ.get("CUDACXX")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home:
            candidates.append(str(Path(home) / "bin" / "nvcc"))
    candidates += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _nvcc_major(nvcc: str) -> int | None:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+)\.", out)
    return int(match.group(1)) if match else None


def _warn(message: str) -> None:
    bar = "=" * 78
    print(f"\n{bar}\nfastxai: {message}\n{bar}\n", file=sys.stderr, flush=True)


class CMakeBuild(build_ext):
    """Configures and builds the CMake project into the directory of the extension's full path."""

    def build_extensions(self) -> None:
        require = _env_flag("FASTXAI_REQUIRE_NATIVE", False)
        built: list[Extension] = []
        for ext in list(self.extensions):
            try:
                self.build_extension(ext)
            except Exception as exc:  # a failed native build must not break a pure-Python install
                if require:
                    raise
                # Do not package a stale module left in the build directory by an earlier build.
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
                _warn(
                    f"building the native extension {ext.name} failed ({type(exc).__name__}: {exc}).\n"
                    "Installing without it: the reference (and Triton) backends still work.\n"
                    "Set FASTXAI_REQUIRE_NATIVE=1 to make this an error; it needs cmake >= 3.18,\n"
                    "a C++20 compiler, ninja or make, pybind11 and torch (pip install --no-build-isolation)."
                )
            else:
                built.append(ext)
        # Only what was built is copied / packaged (editable installs copy it next to the sources).
        self.extensions = built

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            super().build_extension(ext)
            return
        import pybind11
        import torch
        import torch.utils

        output_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        build_type = "Debug" if self.debug else "Release"
        build_temp = Path(self.build_temp).resolve() / "cmake"

        with_cuda = self._with_cuda(torch.version.cuda)
        args = [
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DFASTXAI_OUTPUT_DIR={output_dir}",
            f"-DFASTXAI_EXT_SUFFIX={suffix}",
            f"-DFASTXAI_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
        ]
        if with_cuda:
            args.append(f"-DCMAKE_CUDA_COMPILER={with_cuda}")
        args += shlex.split(os.environ.get("CMAKE_ARGS", ""))

        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("cmake was not found on PATH (pip install cmake, or install it with your OS)")
        print(f"fastxai: configuring the native extension (CUDA: {'on' if with_cuda else 'off'})", flush=True)
        if not self._configure(cmake, ext.source_dir, build_temp, args):
            # A cache from an earlier configuration (another compiler, generator, torch) can make
            # CMake fail: start once from an empty build directory.
            shutil.rmtree(build_temp, ignore_errors=True)
            if not self._configure(cmake, ext.source_dir, build_temp, args):
                raise RuntimeError("CMake configuration failed (see the output above)")
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.run(
            [cmake, "--build", str(build_temp), "--config", build_type, "--parallel", jobs], check=True
        )
        built = output_dir / f"{ext.name.rsplit('.', 1)[-1]}{suffix}"
        if not built.is_file():
            raise RuntimeError(f"the CMake build did not produce {built}")

    def _configure(self, cmake: str, source_dir: Path, build_temp: Path, args: list[str]) -> bool:
        fresh = not (build_temp / "CMakeCache.txt").exists()
        build_temp.mkdir(parents=True, exist_ok=True)
        generator: list[str] = []
        if fresh and "CMAKE_GENERATOR" not in os.environ:
            ninja = self._find_ninja()
            if ninja:
                generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        command = [cmake, "-S", str(source_dir), "-B", str(build_temp), *generator, *args]
        return subprocess.run(command).returncode == 0

    @staticmethod
    def _with_cuda(torch_cuda: str | None) -> str | None:
        """nvcc's path when the CUDA kernels should be built, else None."""
        choice = os.environ.get("FASTXAI_WITH_CUDA", "").strip()
        if choice and not _env_flag("FASTXAI_WITH_CUDA", True):
            return None
        forced = bool(choice)
        nvcc = _find_nvcc()
        if torch_cuda is None or nvcc is None:
            if forced:
                raise RuntimeError(
                    "FASTXAI_WITH_CUDA=1 needs a CUDA build of torch and nvcc "
                    f"(torch.version.cuda={torch_cuda}, nvcc={nvcc})"
                )
            return None
        nvcc_major = _nvcc_major(nvcc)
        torch_major = int(torch_cuda.split(".")[0])
        if nvcc_major != torch_major and not forced:
            _warn(
                f"nvcc ({nvcc}) is CUDA {nvcc_major} but torch was built with CUDA {torch_cuda}:\n"
                "building the CPU kernels only. Point CUDA_HOME at a matching toolkit,\n"
                "or set FASTXAI_WITH_CUDA=1 to force the CUDA build."
            )
            return None
        return nvcc

    @staticmethod
    def _find_ninja() -> str | None:
        found = shutil.which("ninja")
        if found:
            return found
        try:
            import ninja
        except ImportError:
            return None
        candidate = Path(ninja.BIN_DIR) / "ninja"
        return str(candidate) if candidate.is_file() else None


packages = find_packages(include=["fastxai", "fastxai.*"])
package_dir: dict[str, str] = {}
if (ROOT / "kernels" / "__init__.py").is_file():
    # The Triton kernels live at the top level (kernels/) and install as fastxai.kernels.
    packages.append("fastxai.kernels")
    package_dir["fastxai.kernels"] = "kernels"

ext_modules: list[Extension] = []
if _env_flag("FASTXAI_BUILD_NATIVE", True):
    ext_modules.append(CMakeExtension("fastxai._C", ROOT))

setup(
    packages=packages,
    package_dir=package_dir,
    ext_modules=ext_modules,
    cmdclass={"build_ext": CMakeBuild},
)

"""Hand-written CPU kernels, as XLA FFI custom calls: every `*.cc` here,
built into one library with the system's C++ compiler on first use
(parallel.h: the work sharing over XLA's thread pool that they use; vec.h:
the vector type and register blocks of the two products).

tn_product.cc: the kernel-gradient product aᵀb (metajax.tn_product).
matmul.cc: the forward products a b and a bᵀ (metajax.tn_product.matmul).
winograd.cc: the adjoint of Winograd's output transform (metajax.winograd).

Built once per sources, JAX version, compiler (and its version) and CPU
(`-march=native`), cached under $METAJAX_CACHE or ~/.cache/metajax. Without a C++ compiler, or
with METAJAX_CPU_KERNELS=0, `available()` is False and the callers lower to
XLA's own operations, the same numbers (set it before jax.export-ing a CPU
float32 program: a custom call is not in other machines' XLA).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings

import jax
import jaxlib

_DIR = pathlib.Path(__file__).parent
# FFI target name -> the handler symbol the library exports.
TARGETS = {"metajax_tn_product": "MetajaxTnProduct",
           "metajax_matmul": "MetajaxMatmul",
           "metajax_winograd_output_adjoint": "MetajaxWinogradOutAdjoint"}


def _cpu_tag():
  """What the build is specific to: -march=native code must not be loaded on
  another CPU that shares the cache directory."""
  tag = platform.machine() + platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      tag += next((line for line in f if line.startswith(("flags", "Features"))), "")
  except OSError:
    pass
  return tag


def find_compiler() -> list[str]:
  """The C++ compiler's command: $CXX (split like a shell word list), else the
  first of c++, g++ and clang++ on PATH; [] where there is none (or $CXX names
  a program that does not exist)."""
  found = shlex.split(os.environ.get("CXX", "")) or [
      shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")]
  return found if found[0] and shutil.which(found[0]) else []


@functools.cache
def available() -> bool:
  """Builds (or finds cached) and registers the kernels for the CPU platform.
  False, with a warning, where they cannot be built or loaded; False without
  one where METAJAX_CPU_KERNELS=0."""
  if os.environ.get("METAJAX_CPU_KERNELS", "1") == "0":
    return False
  compiler = find_compiler()
  if not compiler:
    warnings.warn("metajax: no C++ compiler found (set CXX); CPU kernels fall back to XLA's ops")
    return False
  sources = sorted(_DIR.glob("*.cc"))
  try:   # an upgraded compiler builds anew
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True,
                             timeout=60).stdout
  except (OSError, subprocess.SubprocessError):
    version = ""
  flags = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC"]
  # The FFI's headers and ABI come with jaxlib.
  versions = f"{jax.__version__} {jaxlib.__version__} {compiler} {version} {flags}"
  headers = sorted(_DIR.glob("*.h"))
  key = hashlib.sha256(b"".join(s.name.encode() + s.read_bytes() for s in sources + headers)
                       + versions.encode() + _cpu_tag().encode()).hexdigest()[:16]
  try:
    cache = pathlib.Path(os.environ.get("METAJAX_CACHE")
                         or pathlib.Path.home() / ".cache" / "metajax")
    lib = cache / f"kernels-{key}.so"
    if not lib.exists():
      cache.mkdir(parents=True, exist_ok=True)
      # Built beside its final name and renamed: a concurrent or interrupted
      # build never leaves a partial library under that name.
      fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
      os.close(fd)
      try:
        subprocess.run([*compiler, *flags, "-I", jax.ffi.include_dir(), *map(str, sources),
                        "-o", tmp], check=True, capture_output=True, text=True, timeout=600)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o755 & ~umask)   # mkstemp's 0600 would keep other users out
        os.replace(tmp, lib)
      finally:
        if os.path.exists(tmp):
          os.remove(tmp)
    handle = ctypes.cdll.LoadLibrary(str(lib))
    for target, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(handle, symbol)),
                                  platform="cpu")
  except Exception as e:  # noqa: BLE001 -- any failure: XLA's ops, with a warning
    detail = getattr(e, "stderr", "") or repr(e)
    warnings.warn(f"metajax: building or loading the CPU kernels ({_DIR}) with "
                  f"{' '.join(compiler)} failed; XLA's ops are used instead. {detail[-2000:]}")
    return False
  return True

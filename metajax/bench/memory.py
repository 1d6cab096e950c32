"""Process memory for benchmark cells (Linux /proc; getrusage elsewhere).

A cell calls `reset_peak` after its warm-up step and keeps what it returns:
`run_mb` is then the peak while stepping, `whole_peak_mb(before)` the peak of
the whole process (compilation and warm-up included). Resetting the kernel's
high-water mark also resets getrusage's ru_maxrss, so the whole-process peak
must be read before the reset, not at the end.
"""

from __future__ import annotations

import ctypes
import resource
import sys


def peak_rss_mb() -> float:
  """getrusage's peak resident set (since start, or since the last `reset_peak` on Linux)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes there, KiB on Linux


def hwm_mb():
  """VmHWM (MiB): peak resident set since the last `reset_peak` (or process start)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return None


def reset_peak():
  """Resets the kernel's high-water mark so `run_mb` measures from now.

  Returns the peak so far (MiB), which the reset erases. Freed heap (e.g. the
  compiler's) is first returned to the OS with glibc's malloc_trim, so the mark
  starts at what the process really holds.
  """
  before = max(peak_rss_mb(), hwm_mb() or 0.0)
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:
    pass
  return before


def run_mb():
  """Peak resident set (MiB) since the last `reset_peak`; None where it cannot be reset."""
  return hwm_mb()


def whole_peak_mb(before) -> float:
  """Peak resident set of the whole process: `before` (from `reset_peak`) or any later one."""
  return max(before or 0.0, peak_rss_mb(), hwm_mb() or 0.0)

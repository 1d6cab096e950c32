"""Process memory for benchmark cells (Linux /proc; None elsewhere)."""

from __future__ import annotations

import ctypes
import resource


def peak_rss_mb() -> float:
  """Peak resident set of this process since it started (compilation included)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak() -> bool:
  """Resets the kernel's high-water mark (VmHWM) so `hwm_mb` measures from now.

  Freed heap (e.g. the compiler's) is first returned to the OS with glibc's
  malloc_trim, so the mark starts at what the process really holds.
  """
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def hwm_mb():
  """VmHWM: peak resident set since the last `reset_peak` (or process start)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return None

"""Process memory for benchmark cells (Linux /proc; getrusage elsewhere).

A cell calls `mark = reset_peak()` after its warm-up step: `run_mb(mark)` is
then the peak while stepping, `whole_peak_mb(mark)` the peak of the whole
process (compilation and warm-up included). On Linux both come from VmHWM,
this process's own high-water mark: getrusage's ru_maxrss is reset along with it
and also keeps, as a floor, the RSS of the process that started this one (at
exec), so it is used only where /proc is missing.
"""

from __future__ import annotations

import resource
import sys
from typing import NamedTuple, Optional

from metajax.heap import return_freed_heap


class Mark(NamedTuple):
  before_mb: float   # peak resident set up to the reset
  reset: bool        # whether the kernel's high-water mark was reset


def peak_rss_mb() -> float:
  """getrusage's peak resident set (on Linux: reset by `reset_peak`, floored at the parent's)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes there, KiB on Linux


def hwm_mb() -> Optional[float]:
  """VmHWM (MiB): peak resident set since the last `reset_peak` (or process start)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return None


def _peak_mb() -> float:
  """Peak resident set (MiB) since the last reset: VmHWM, or getrusage without /proc."""
  hwm = hwm_mb()
  return peak_rss_mb() if hwm is None else hwm


def reset_peak() -> Mark:
  """Resets the kernel's high-water mark so `run_mb` measures from now.

  Returns the peak so far, which the reset erases. Freed heap (e.g. the
  compiler's) is first returned to the OS (glibc's malloc_trim), so the mark
  starts at what the process really holds.
  """
  before = _peak_mb()
  return_freed_heap()
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    reset = True
  except OSError:
    reset = False
  return Mark(before, reset)


def run_mb(mark: Mark) -> Optional[float]:
  """Peak resident set (MiB) since `mark`; None where the mark could not be reset."""
  return hwm_mb() if mark.reset else None


def whole_peak_mb(mark: Mark) -> float:
  """Peak resident set (MiB) of the whole process: before `mark` or any later one."""
  return max(mark.before_mb, _peak_mb())

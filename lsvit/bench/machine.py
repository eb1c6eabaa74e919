"""What the numbers were measured on: CPU, GPU, library versions, git commit, load."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

import torch


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> Optional[str]:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001  (absent or broken optional package: report None)
        return None


# Above these, timings mostly measure the other processes: a 1-minute load average of at least one runnable
# process per core besides the benchmark, or an interquartile range above this fraction of the median.
BUSY_LOAD_PER_CORE = 1.0
NOISY_SPREAD = 0.25


def load_average() -> Optional[float]:
    """The 1-minute load average, or None where the platform has none."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def busy_warning(
    loads: list[Optional[float]], cpus: Optional[int] = None, spreads: Optional[list[float]] = None
) -> Optional[str]:
    """One line saying why timings taken at these load averages (and IQR / median ratios) are unreliable, or None.

    The rule: a load average at or above ``BUSY_LOAD_PER_CORE`` per core (``cpus``: this machine's by default),
    or any spread above ``NOISY_SPREAD``.
    """
    cpus = cpus or os.cpu_count() or 1
    reasons = []
    high = [x for x in loads if x is not None and x >= BUSY_LOAD_PER_CORE * cpus]
    if high:
        reasons.append(f"load average {max(high):.1f} on {cpus} cores")
    noisy = [x for x in spreads or [] if x > NOISY_SPREAD]
    if noisy:
        reasons.append(f"spread (IQR) up to {100 * max(noisy):.0f}% of the median")
    if not reasons:
        return None
    return f"warning: the machine is busy ({'; '.join(reasons)}): timings are unreliable, rerun when it is idle"


def machine_info(device: torch.device) -> dict:
    info = {
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "cuda_runtime": torch.version.cuda,
        "device": str(device),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "triton_interpret": os.environ.get("TRITON_INTERPRET"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_name=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_sm_count=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
        )
    return info

"""Compute accounting of a stage: wall time and, where the platform exposes it, energy.

Energy comes from the Linux powercap RAPL counters (package domains `intel-rapl:N`, microjoules,
wrapping at `max_energy_range_uj`) when they are readable, and from NVML's total-energy counter
(millijoules) on a CUDA device when `pynvml` is installed. Where neither is readable the metrics say
"not available" and why; nothing estimates energy from time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

POWERCAP = Path("/sys/class/powercap")


def rapl_domains(root: Path = POWERCAP) -> list[Path]:
    """Readable top-level RAPL package domains (sub-domains are contained in their package)."""
    found = []
    for domain in sorted(root.glob("intel-rapl:*")) if root.is_dir() else []:
        if domain.name.count(":") == 1 and _read_int(domain / "energy_uj") is not None:
            found.append(domain)
    return found


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _nvml_handle(device: torch.device) -> Any:
    if device.type != "cuda":
        return None
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
    except pynvml.NVMLError:
        return None


def _nvml_energy_mj(handle: Any) -> int | None:
    import pynvml

    try:
        return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
    except pynvml.NVMLError:
        return None


@dataclass
class EnergyMeter:
    """Measures wall time and energy between `start()` and `stop()` on the stage's device."""

    device: torch.device
    root: Path = POWERCAP
    started: float = 0.0
    rapl_start: dict[Path, int] = field(default_factory=dict)
    nvml: Any = None
    nvml_start: int | None = None

    def start(self) -> EnergyMeter:
        """Read the counters and the clock."""
        self.rapl_start = {d: _read_int(d / "energy_uj") for d in rapl_domains(self.root)}
        self.nvml = _nvml_handle(self.device)
        self.nvml_start = None if self.nvml is None else _nvml_energy_mj(self.nvml)
        self.started = time.perf_counter()
        return self

    def stop(self) -> dict[str, Any]:
        """Wall seconds and joules since `start()`, as stage metrics (`not available` where unreadable)."""
        out: dict[str, Any] = {"stage_wall_s": time.perf_counter() - self.started}
        if self.rapl_start:
            joules = 0.0
            for domain, before in self.rapl_start.items():
                after = _read_int(domain / "energy_uj")
                wrap = _read_int(domain / "max_energy_range_uj") or 0
                joules += ((after - before) % wrap if wrap else after - before) / 1e6
            out["cpu_energy_j"] = joules
        else:
            out["cpu_energy_j"] = "not available: no readable RAPL counters under " + str(self.root)
        if self.device.type == "cuda":
            end = None if self.nvml is None else _nvml_energy_mj(self.nvml)
            out["gpu_energy_j"] = (end - self.nvml_start) / 1e3 if end is not None and self.nvml_start is not None \
                else "not available: NVML energy counter unreadable (pynvml missing or unsupported GPU)"
        return out

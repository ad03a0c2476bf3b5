"""Which device to run on, in which dtype, and the few device calls that differ between backends.

Order for "auto": Ascend NPU → CUDA → Apple MPS → CPU. `torch_npu` is imported lazily and only counts if
the import works (without the CANN toolkit it raises) and reports a device. Note that an installed
torch_npu is auto-loaded by `import torch` unless `TORCH_DEVICE_BACKEND_AUTOLOAD=0`.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch

from higgslab.errors import HiggsLabError

KINDS = ("npu", "cuda", "mps", "cpu")


def npu_available() -> bool:
    """True when torch_npu imports (CANN present) and sees at least one NPU."""
    try:
        import torch_npu  # noqa: F401  registers torch.npu

        return bool(torch.npu.is_available())
    except Exception:  # torch_npu raises all sorts of errors without a working CANN install
        return False


def _available(kind: str) -> bool:
    if kind == "npu":
        return npu_available()
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return torch.backends.mps.is_available()
    return kind == "cpu"


def _backend(device: torch.device):
    """The `torch.<kind>` module for an accelerator device (None on CPU)."""
    return getattr(torch, device.type, None) if device.type != "cpu" else None


def pick_device(name: str = "auto") -> torch.device:
    """ "auto" → the first available of npu, cuda, mps, cpu; else the device named ("cuda:1", "npu", "cpu")."""
    if name == "auto":
        return torch.device(next(kind for kind in KINDS if _available(kind)))
    match = re.fullmatch(r"(\w+)(?::(\d+))?", name.strip())
    if match is None or match[1] not in KINDS:
        raise HiggsLabError(f"unknown device {name!r}: use auto, {', '.join(KINDS)} (with :index if needed)")
    kind, index = match[1], match[2]
    if not _available(kind):
        raise HiggsLabError(f"device {name!r} is not available here")
    if (
        index is not None
        and kind in ("npu", "cuda")
        and int(index) >= _backend(torch.device(kind)).device_count()
    ):
        raise HiggsLabError(
            f"device {name!r} does not exist: {_backend(torch.device(kind)).device_count()} found"
        )
    return torch.device(name.strip())


def device_name(device: torch.device) -> str:
    """Human-readable name: the accelerator's product name, or the CPU's."""
    if device.type in ("cuda", "npu"):
        return str(_backend(device).get_device_name(device.index or 0))
    if device.type == "mps":
        return "Apple MPS"
    return platform.processor() or platform.machine() or "cpu"


def cpu_features() -> str:
    """The CPU's model name and the units its fast matrix kernels depend on, for reports: e.g.
    "AMD EPYC (torch kernels: AVX2; AVX-512: no, AVX-512 bf16: no, AMX: no)"; the units only where
    /proc/cpuinfo tells them."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        info = ""
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    name = model[1].strip() if model else platform.processor() or platform.machine()
    described = f"{name} (torch kernels: {torch.backends.cpu.get_cpu_capability()}"
    flags = re.search(r"^flags\s*:\s*(.+)$", info, re.M)
    if flags is None:
        return described + ")"
    units = {"AVX-512": "avx512f", "AVX-512 bf16": "avx512_bf16", "AMX": "amx_tile"}
    have = set(flags[1].split())
    return (
        described + "; " + ", ".join(f"{u}: {'yes' if f in have else 'no'}" for u, f in units.items()) + ")"
    )


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on accelerators, fp16 on NPUs without bf16 (910A/910ProA and 310P class), float32 on CPU."""
    if device.type == "cpu":
        return torch.float32
    if device.type == "npu" and re.search(r"310P|910(Pro|Premium)?A", device_name(device)):
        return torch.float16
    return torch.bfloat16


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timing); no-op on CPU."""
    backend = _backend(device)
    if backend is not None:
        backend.synchronize()


def peak_memory(device: torch.device) -> int | None:
    """Peak bytes allocated on the device since the last reset; None where the backend does not track it."""
    backend = _backend(device)
    if device.type in ("cuda", "npu"):
        return int(backend.max_memory_allocated(device))
    return None


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement (CUDA and NPU; no-op elsewhere)."""
    if device.type in ("cuda", "npu"):
        _backend(device).reset_peak_memory_stats(device)


def graph_capture_supported(device: torch.device) -> bool:
    """Whether a decode step can be captured and replayed as a device graph (CUDAGraph / torch_npu NPUGraph)."""
    if device.type == "cuda":
        return hasattr(torch.cuda, "CUDAGraph")
    if device.type == "npu":
        return hasattr(_backend(device), "NPUGraph")
    return False

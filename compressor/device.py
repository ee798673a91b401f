"""Which device a job runs on: `auto | cpu | cuda | cuda:N`, checked without torch and resolved against the machine.

    check_device_spec("cuda:1")            # "cuda:1"; a malformed name raises ValueError saying what is accepted
    needs_gpu("cuda:1"), needs_gpu("auto") # True, None (auto runs wherever it lands)
    resolve_device("auto")                 # "cuda" when torch.cuda.is_available(), else "cpu"
    resolve_device("cuda:3")               # DeviceUnavailable when this machine has fewer than 4 CUDA devices

Rule of `resolve_device(spec, *, cuda_available, device_count)`:
    auto    -> "cuda" if cuda_available else "cpu"
    cpu     -> "cpu"
    cuda    -> "cuda"      if cuda_available, else refused
    cuda:N  -> "cuda:N"    if cuda_available and N < device_count, else refused
`cuda_available` / `device_count` default to torch's answers (torch is imported only then), so the spec checks,
the queue routing (workers) and the recipe validation never import torch.
"""
from __future__ import annotations

import re

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:(0|[1-9][0-9]{0,3}))?)$")
DEVICE_HELP = "auto (a GPU when torch.cuda.is_available(), else the CPU), cpu, cuda or cuda:N (N = 0, 1, ...)"


class DeviceUnavailable(RuntimeError):
    """The recipe or command asks for a device this machine does not have; the message says what to use."""


def check_device_spec(spec: str) -> str:
    """`spec` itself when it is auto, cpu, cuda or cuda:N; ValueError naming the accepted forms otherwise."""
    if not isinstance(spec, str) or not DEVICE_PATTERN.match(spec):
        raise ValueError(f"device {spec!r} is not one of: {DEVICE_HELP}")
    return spec


def needs_gpu(spec: str) -> bool | None:
    """True for cuda / cuda:N, False for cpu, None for auto (the job may run on either)."""
    spec = check_device_spec(spec)
    return None if spec == "auto" else spec.startswith("cuda")


def resolve_device(spec: str, *, cuda_available: bool | None = None, device_count: int | None = None) -> str:
    """The torch device name `spec` means on this machine (rule in the module docstring)."""
    spec = check_device_spec(spec)
    if spec == "cpu":
        return "cpu"
    if cuda_available is None:
        import torch
        cuda_available = torch.cuda.is_available()
    if spec == "auto":
        return "cuda" if cuda_available else "cpu"
    if not cuda_available:
        raise DeviceUnavailable("no CUDA device: torch.cuda.is_available() is False; use device: cpu or auto")
    if spec == "cuda":
        return "cuda"
    index = int(spec.split(":", 1)[1])
    if device_count is None:
        import torch
        device_count = torch.cuda.device_count()
    if index >= device_count:
        have = "cuda:0" if device_count == 1 else f"cuda:0 .. cuda:{device_count - 1}"
        raise DeviceUnavailable(f"no device {spec}: this machine has {device_count} CUDA device"
                                f"{'' if device_count == 1 else 's'} ({have}); use one of those, cuda or auto")
    return spec


def visible_gpu_hint(env: dict | None = None, proc_dir: str = "/proc/driver/nvidia/gpus") -> int:
    """How many NVIDIA GPUs this process could see, from the driver's /proc entries and CUDA_VISIBLE_DEVICES, without
    touching CUDA (a process that forks workers must not initialise it). 0 means certainly none; a positive hint is
    confirmed by `probe_cuda_devices` (the driver may be there while torch is a CPU build)."""
    import os

    env = os.environ if env is None else env
    try:
        found = len([p for p in os.listdir(proc_dir) if not p.startswith(".")])
    except OSError:
        found = 0
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return found
    names = [v for v in visible.split(",") if v.strip()]
    if not names or names[0].strip().startswith("-"):
        return 0
    return min(found, len(names))


def probe_cuda_devices(python: str | None = None, timeout_s: float = 120.0) -> int:
    """torch.cuda.device_count() asked in a child interpreter (NVML-based check), so this process never initialises
    CUDA; 0 when the child fails or takes longer than `timeout_s`."""
    import os
    import subprocess
    import sys

    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        out = subprocess.run([python or sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             timeout=timeout_s, env={**os.environ, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"})
        return int(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return 0


def machine_has_gpu() -> bool:
    """A CUDA GPU that torch can use is present (no CUDA initialised in this process)."""
    return visible_gpu_hint() > 0 and probe_cuda_devices() > 0

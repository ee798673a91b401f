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

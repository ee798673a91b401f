"""Size: parameters (total, active per token), checkpoint bytes, peak memory of one forward pass.

    checkpoint_bytes = sum of the weight files' sizes (*.safetensors) in the checkpoint folder, or, for a model not
                       saved yet, sum over the state dict's unique tensors of numel * element size
    peak_memory      = weight bytes + the peak of tensor memory allocated during one forward over `ids`
                       GPU: torch.cuda.max_memory_allocated - memory_allocated before.
                       CPU: the torch profiler's allocation and free events replayed in time order (max of the
                       running sum). Resident-set figures (VmHWM, ru_maxrss) miss most of it, because the C
                       allocator keeps freed blocks resident and reuses them; they remain the fallback.

    size = size_metrics(model, sample_ids=windows[:8], checkpoint_dir=Path("out/checkpoint"))
"""
from __future__ import annotations

import copy
import os
import resource
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from compressor.inspect import count_params, stored_tensors


@dataclass
class SizeStats:
    params_total: int
    params_active: int
    weight_bytes: int                 # in-memory bytes of the unique stored tensors
    checkpoint_bytes: int
    checkpoint_bytes_from: str        # "files" or "state_dict"
    peak_memory_bytes: int            # weight bytes + peak activation memory of one forward
    peak_memory_method: str           # "cuda", "torch_profiler", "vmhwm", "ru_maxrss" or "none"

    def to_dict(self) -> dict:
        return asdict(self)


def _is_wrapped(t: torch.Tensor) -> bool:
    """A tensor subclass that stores other tensors (torchao's quantized weights: int8 / fp8 data + scales)."""
    return type(t.data if isinstance(t, nn.Parameter) else t) is not torch.Tensor and hasattr(t, "__tensor_flatten__")


def _stored_bytes(t: torch.Tensor) -> int:
    if _is_wrapped(t):
        names, _ = t.__tensor_flatten__()
        return sum(_stored_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the stored tensors; a quantized weight counts its data and scales."""
    if any(_is_wrapped(p) for p in model.parameters()):                 # wrappers share no real storage pointer
        return sum(_stored_bytes(p) for p in model.parameters()) + sum(b.numel() * b.element_size()
                                                                       for b in model.buffers())
    return sum(t.numel() * t.element_size() for t in stored_tensors(model).values())


def _count(model: nn.Module):
    """count_params, on a meta copy of the architecture when weights are quantized wrappers (their storage cannot
    be told apart, so tied-weight detection would merge them)."""
    if not any(_is_wrapped(p) for p in model.parameters()):
        return count_params(model)
    import transformers as tf
    config = copy.deepcopy(model.config)
    config.quantization_config = None
    with torch.device("meta"):
        return count_params(tf.AutoModelForCausalLM.from_config(config))


def checkpoint_bytes(checkpoint_dir: Path | None) -> int | None:
    """Bytes of the weight files in `checkpoint_dir` (None when there is no folder or no weight file)."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None
    files = list(Path(checkpoint_dir).glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) if files else None


# -- peak memory -------------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")      # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _ru_maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


@contextmanager
def _native_stderr_muted():
    """The profiler's C++ side logs "profiler_start/stop" lines straight to file descriptor 2; the library does not
    print, so point fd 2 at /dev/null while it runs (a few hundred milliseconds)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _profiled_peak(model: nn.Module, ids: torch.Tensor) -> int:
    """Peak of live tensor bytes during one forward: allocations are attributed to the op that made them (at its
    end), frees outside ops are `[memory]` events; replayed in time order, the running sum's maximum."""
    from torch.profiler import ProfilerActivity, profile
    with _native_stderr_muted(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = model(input_ids=ids, use_cache=False)
        del out
    points = []
    for e in prof.events():
        if e.name == "[memory]":
            points.append((e.time_range.start, e.cpu_memory_usage))
        elif e.self_cpu_memory_usage:
            points.append((e.time_range.end, e.self_cpu_memory_usage))
    points.sort(key=lambda p: p[0])
    live = peak = 0
    for _, delta in points:
        live += delta
        peak = max(peak, live)
    return int(peak)


@torch.no_grad()
def forward_peak_bytes(model: nn.Module, ids: torch.Tensor) -> tuple[int, str]:
    """(extra bytes at the peak of one forward over `ids`, method) per the module docstring."""
    device = next(model.parameters()).device
    model.eval()
    ids = ids.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        model(input_ids=ids, use_cache=False)
        torch.cuda.synchronize()
        return max(torch.cuda.max_memory_allocated(device) - start, 0), "cuda"
    try:
        return _profiled_peak(model, ids), "torch_profiler"
    except (RuntimeError, AttributeError):
        pass
    if _reset_hwm() and _status_kb("VmRSS") is not None:
        start = _status_kb("VmRSS")
        model(input_ids=ids, use_cache=False)
        peak = _status_kb("VmHWM") or start
        return max(peak - start, 0) * 1024, "vmhwm"
    start = _ru_maxrss_bytes()
    model(input_ids=ids, use_cache=False)
    return max(_ru_maxrss_bytes() - start, 0), "ru_maxrss"


def size_metrics(model: nn.Module, *, sample_ids: torch.Tensor | None = None,
                 checkpoint_dir: Path | None = None) -> SizeStats:
    """Parameters, checkpoint bytes and peak memory (docstring); peak memory needs `sample_ids` [B, L]."""
    counts = _count(model)
    w_bytes = weight_bytes(model)
    ck = checkpoint_bytes(checkpoint_dir)
    peak, method = (0, "none")
    if sample_ids is not None:
        peak, method = forward_peak_bytes(model, sample_ids)
    return SizeStats(params_total=counts.total, params_active=counts.active, weight_bytes=w_bytes,
                     checkpoint_bytes=ck if ck is not None else w_bytes,
                     checkpoint_bytes_from="files" if ck is not None else "state_dict",
                     peak_memory_bytes=w_bytes + peak, peak_memory_method=method)

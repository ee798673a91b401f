"""Expert-kernel choice: time the experts implementations this machine can run and keep the fastest.

Candidates are transformers' `experts_implementation` values: `eager` and `grouped_mm` everywhere; on a GPU also
`batched_mm`, and `deepgemm` / `sonicmoe` when the `kernels` package is installed; each in the model's dtype and, where
the hardware runs it natively (CUDA with bf16, or a CPU with AVX512-BF16 / AMX), in bf16. `batched_mm` is never a
candidate on CPU: it gathers one weight copy per (token, expert) pair and runs prefill 10-100x slower there.
`grouped_mm` on CPU also needs every expert-weight stride to be a multiple of 16 bytes (an fp32 expert width that is
a multiple of 4), so models slimmed to other widths run `eager`.

The probe times one forward over `sample_ids` per candidate (best of `repeats` after a warm-up), interleaved, and
returns the winner with every timing; `apply_kernel_` then sets it on the model.

    choice = choose_experts_kernel(model, sample_ids=ids[:2])
    apply_kernel_(model, choice)        # model.set_experts_implementation(choice.implementation)
"""
from __future__ import annotations

import copy
import importlib.util
import logging
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from compressor.distill.trainer import bf16_autocast_supported

log = logging.getLogger(__name__)

NEVER_ON_CPU = ("batched_mm",)
GPU_ONLY = ("batched_mm", "deepgemm", "sonicmoe")


@dataclass
class KernelChoice:
    implementation: str                                    # experts_implementation to use
    dtype: str                                             # "float32", "bfloat16", ...
    device: str
    probe_ms: dict[str, float] = field(default_factory=dict)   # "impl/dtype" -> best forward time
    skipped: dict[str, str] = field(default_factory=dict)      # "impl/dtype" -> why it was not a candidate

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        return f"{self.implementation}/{self.dtype}"


def current_implementation(model: nn.Module) -> str:
    return getattr(model.config, "_experts_implementation", None) or "eager"


def grouped_mm_aligned(model: nn.Module) -> bool:
    """True when every fused expert weight [E, a, b] has rows of a multiple of 16 bytes along both a and b, so the
    contiguous tensors and their transposes have the strides the CPU grouped_mm kernel needs."""
    for mod in model.modules():
        w = getattr(mod, "gate_up_proj", None)
        if not isinstance(w, torch.Tensor) or w.dim() != 3:
            continue
        for p in (w, getattr(mod, "down_proj", None)):
            if isinstance(p, torch.Tensor) and any((d * p.element_size()) % 16 for d in p.shape[1:]):
                return False
    return True


def candidate_kernels(model: nn.Module, *, allow_bf16: bool = True) -> tuple[list[tuple[str, torch.dtype]], dict]:
    """(implementation, dtype) pairs worth timing on this model and machine, and the reasons others were left out."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    skipped: dict[str, str] = {}
    impls = ["eager", "grouped_mm"]
    if device.type == "cuda":
        impls.append("batched_mm")
        if importlib.util.find_spec("kernels") is not None:
            impls += ["deepgemm", "sonicmoe"]
        else:
            skipped["deepgemm,sonicmoe"] = "the `kernels` package is not installed"
    else:
        skipped["batched_mm"] = "never on CPU: it copies expert weights per token and is 10-100x slower in prefill"
        for name in ("deepgemm", "sonicmoe"):
            skipped[name] = "needs a CUDA GPU"
    if device.type == "cpu" and not grouped_mm_aligned(model):
        impls.remove("grouped_mm")
        skipped["grouped_mm"] = "expert weights are not 16-byte aligned (fp32 expert width not a multiple of 4)"
    dtypes = [dtype]
    if allow_bf16 and dtype != torch.bfloat16:
        if bf16_autocast_supported(device):
            dtypes.append(torch.bfloat16)
        else:
            skipped["bfloat16"] = "this hardware has no native bf16 matrix units"
    pairs = [(i, d) for d in dtypes for i in impls if not (i == "deepgemm" and d != torch.bfloat16)]
    return pairs, skipped


def candidate_labels(model: nn.Module, *, allow_bf16: bool = True) -> set[str]:
    """The "implementation/dtype" labels of `candidate_kernels`."""
    return {f"{i}/{_dtype_name(d)}" for i, d in candidate_kernels(model, allow_bf16=allow_bf16)[0]}


@torch.no_grad()
def choose_experts_kernel(model: nn.Module, *, sample_ids: torch.Tensor, allow_bf16: bool = True,
                          repeats: int = 2, only: set[str] | None = None) -> KernelChoice:
    """Time each candidate on a forward over `sample_ids` [B, L] and return the fastest (rule in the docstring).
    `only` restricts the candidates to these "implementation/dtype" labels (the kernels a second model can run too,
    so that both are timed with one kernel).

    The model ends with its original implementation; call `apply_kernel_` to switch. A candidate that raises is
    recorded as skipped with the error."""
    device = next(model.parameters()).device
    pairs, skipped = candidate_kernels(model, allow_bf16=allow_bf16)
    if only is not None:
        for impl, dtype in pairs:
            if f"{impl}/{_dtype_name(dtype)}" not in only:
                skipped[f"{impl}/{_dtype_name(dtype)}"] = "the other model of the comparison cannot run it"
    original = current_implementation(model)
    base_dtype = next(model.parameters()).dtype
    models = {base_dtype: model}
    ids = sample_ids.to(device)
    times: dict[str, float] = {}
    was_training = model.training
    model.eval()
    try:
        for _ in range(repeats + 1):                      # round 0 warms up; rounds interleave the candidates
            for impl, dtype in pairs:
                key = f"{impl}/{_dtype_name(dtype)}"
                if key in skipped:
                    continue
                m = models.get(dtype)
                if m is None:
                    m = models[dtype] = copy.deepcopy(model).to(dtype)
                try:
                    _set(m, impl)
                    t0 = time.perf_counter()
                    m(input_ids=ids, use_cache=False)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    dt = (time.perf_counter() - t0) * 1000
                except (RuntimeError, ValueError, KeyError, NotImplementedError) as exc:
                    skipped[key] = f"failed: {str(exc).splitlines()[0][:200]}"
                    times.pop(key, None)
                    continue
                if _ > 0:
                    times[key] = min(times.get(key, float("inf")), dt)
    finally:
        _set(model, original)
        model.train(was_training)
    if not times:
        raise RuntimeError(f"no experts implementation ran on this model: {skipped}")
    best = min(times, key=times.get)
    impl, dtype = best.split("/")
    return KernelChoice(implementation=impl, dtype=dtype, device=device.type,
                        probe_ms={k: round(v, 3) for k, v in times.items()}, skipped=skipped)


def apply_kernel_(model: nn.Module, choice: KernelChoice | str) -> None:
    """Set the experts implementation on `model` (dtype is not changed here; see `KernelChoice.dtype`)."""
    impl = choice.implementation if isinstance(choice, KernelChoice) else choice
    if impl in NEVER_ON_CPU and next(model.parameters()).device.type == "cpu":
        raise ValueError(f"{impl} is not used on CPU (10-100x slower in prefill); use eager or grouped_mm")
    _set(model, impl)


def safe_default_kernel_(model: nn.Module) -> str:
    """Make sure the model's current implementation can run: on CPU, switch to `eager` when `grouped_mm` cannot run
    on these weights (or `batched_mm` was set). Returns the implementation in use."""
    impl = current_implementation(model)
    if next(model.parameters()).device.type == "cpu":
        if impl in NEVER_ON_CPU or (impl == "grouped_mm" and not grouped_mm_aligned(model)):
            _set(model, "eager")
            return "eager"
    return impl


def _set(model: nn.Module, impl: str) -> None:
    if current_implementation(model) == impl:
        return
    try:
        model.set_experts_implementation(impl)
    except (ValueError, AttributeError) as exc:                 # families with undecorated experts (Llama4, DBRX)
        raise ValueError(f"{type(model).__name__} cannot switch its experts implementation to {impl}: {exc}") from None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")

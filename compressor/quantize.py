"""The recipe's quantize stage: two formats.

compressed-tensors (default; `quantize_to_compressed`): the model in memory is quantized by
`compressor.quantization` (RTN or GPTQ layer by layer on the recipe's calibration batches, a scheme per module
class) and saved in the compressed-tensors format vLLM serves; stock transformers reloads it (dequantized on the
CPU). torchao (`quantize_checkpoint`, recipes before version 4): kept because it is the one format here whose
weights stay int8 / fp8 in memory when stock transformers loads them on a CPU (compressed-tensors checkpoints are
dequantized to the model dtype there), at W8A16 / FP8 round to nearest only.

torchao: weight-only quantization of a saved checkpoint, written so that stock transformers reloads it
(`from_pretrained` reads `quantization_config` from config.json and rebuilds torchao's tensors; torchao must be
installed).

What is quantized, by exact parameter name (torchao's `FqnToConfig`):
    - every nn.Linear weight inside the decoder layers (attention projections, shared experts, dense MLPs);
    - the fused 3-D expert tensors of transformers 5 (`experts.gate_up_proj` [E, 2I, H], `experts.down_proj`
      [E, H, I]; GPT-OSS stores them transposed): one int8 / float8 value per weight, one scale per row of the
      last axis, per expert.
    Kept in the checkpoint's dtype: embeddings, the LM head, routers (and shared-expert gates), norms, biases.

    W8A16   int8 weights, symmetric, per row (torchao Int8WeightOnlyConfig(PerRow)): w ~ s_r * q, q in [-128, 127]
    FP8     float8 e4m3 weights, per row (torchao Float8WeightOnlyConfig): w ~ s_r * fp8(w / s_r)

Round to nearest (rtn) is the only method here (llm-compressor's GPTQ needs transformers <= 5.17; torchao's runs on
CUDA only). Quantized experts run with transformers' `eager` experts implementation (torchao's tensors do not
implement the transposes `grouped_mm` needs): the saved config.json says `"experts_implementation": "eager"`, which
`from_pretrained` reads, so a stock `from_pretrained(path)` with no arguments runs it; `eager_experts_if_quantized_`
switches a model loaded from a checkpoint written before that key.

    report = quantize_checkpoint("out/run1/checkpoint", "out/run1/w8", QuantizeConfig(scheme="W8A16"))
    report.checkpoint_bytes_after, report.quantized["expert_tensors"]
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

from compressor.recipe import QuantizeConfig

QUANT_EXPERTS_IMPLEMENTATION = "eager"
_COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
           "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model")


@dataclass
class QuantizeReport:
    scheme: str
    method: str
    library: str                                  # "torchao 0.18.0"
    quantized: dict                               # {"linear": n, "expert_tensors": n}
    params_quantized: int
    params_kept: int                              # parameters left in the checkpoint's dtype
    checkpoint_bytes_before: int
    checkpoint_bytes_after: int
    max_abs_logit_diff: float | None = None       # reloaded quantized vs unquantized, over the check ids
    experts_implementation: str = QUANT_EXPERTS_IMPLEMENTATION
    kept: list[str] = field(default_factory=lambda: ["embeddings", "lm_head", "routers", "norms", "biases"])
    seconds: float = 0.0
    format: str = "torchao"
    details: dict | None = None                   # compressed-tensors: classes, GPTQ / RTN counts, expert fallbacks

    def to_dict(self) -> dict:
        return asdict(self)


def check_quantize(cfg: QuantizeConfig | None) -> None:
    """Raise before any work when quantization was asked for and its library is missing."""
    import importlib.util
    if cfg is None:
        return
    if cfg.format == "torchao" and importlib.util.find_spec("torchao") is None:
        raise ValueError("quantize format torchao needs the `torchao` package: pip install torchao==0.18.0")
    if cfg.format == "compressed-tensors" and importlib.util.find_spec("compressed_tensors") is None:
        raise ValueError("quantize format compressed-tensors needs the `compressed-tensors` package: "
                         "pip install compressed-tensors==0.20.1")


def check_group_sizes(cfg: QuantizeConfig | None, config: dict, *, expert_keep_ratio: float = 1.0) -> None:
    """Refuse, from config.json alone (before any weight is read), int groups that would not divide the input size
    of a weight they quantize: the hidden size (every projection that reads the residual stream), the attention
    output's input (heads x head_dim), the experts' width after slimming (`compressor.estimate.kept_width`)."""
    from compressor.estimate import kept_width
    from compressor.feasibility import ModelLimits
    from compressor.quantization.scheme import SCHEMES, scheme_named

    if cfg is None or cfg.format != "compressed-tensors":
        return
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    hidden, heads = text.get("hidden_size"), text.get("num_attention_heads")
    head_dim = text.get("head_dim") or (hidden // heads if hidden and heads else None)
    width = ModelLimits.from_config(config).width
    sizes = {"experts": [("hidden_size", hidden)], "shared_experts": [("hidden_size", hidden)],
             "dense_mlp": [("hidden_size", hidden)],
             "attention": [("hidden_size", hidden), ("num_attention_heads x head_dim",
                                                     heads * head_dim if heads and head_dim else None)]}
    if width:
        sizes["experts"].append(("expert width after slimming", kept_width(width, expert_keep_ratio)))
    for klass, name in cfg.class_schemes().items():
        if name is None or SCHEMES[name].type != "int":
            continue
        g = scheme_named(name, group_size=cfg.group_size).group_size
        for what, n in sizes[klass]:
            if g and isinstance(n, int) and n % g:
                raise ValueError(f"quantize: {klass} {name} groups of {g} columns do not divide the {what} ({n}); "
                                 f"set quantize.group_size to a divisor of {n} (e.g. {_divisor(n, g)}) or `channel`")


def _divisor(n: int, g: int) -> int:
    return next((d for d in (64, 32, 16, 8) if d < g and n % d == 0), 1)


def saved_dtype(folder: str | Path) -> torch.dtype:
    """The floating dtype config.json names (`dtype` / `torch_dtype`), float32 when it names none."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return torch.float32
    dtype = getattr(torch, str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32"), None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def quantize_to_compressed(model: nn.Module, batches: list | None, cfg: QuantizeConfig, out: str | Path, *,
                           dtype: torch.dtype, tokenizer=None, unquantized: str | Path | None = None,
                           check_ids: torch.Tensor | None = None, reporter=None) -> tuple[nn.Module, QuantizeReport]:
    """Quantize `model` in place by `cfg` (compressed-tensors format: `compressor.quantization`), save it into
    `out` with scales in `dtype`, and reload it through stock `from_pretrained` in float32. With `check_ids` [B, L]
    the reloaded logits are compared with the in-memory quantized model's; non-finite logits raise. Returns the
    reloaded model and the report.

        model, report = quantize_to_compressed(model, calib, QuantizeConfig(scheme="W4A16"), "out/w4",
                                               dtype=torch.bfloat16, tokenizer=tok)
    """
    from compressor.evaluate.size import checkpoint_bytes
    from compressor.quantization.export import load_compressed, save_compressed
    from compressor.quantization.sequential import quantize_model_

    t0 = time.perf_counter()
    plan = cfg.plan()
    qrep, params = quantize_model_(model, batches if cfg.method == "gptq" else None, plan, scale_dtype=dtype,
                                   reporter=reporter)
    want = None
    if check_ids is not None:
        with torch.no_grad():
            dev = next(model.parameters()).device
            want = model(input_ids=check_ids.to(dev), use_cache=False).logits.float().cpu()
    info = save_compressed(model, params, out, dtype=dtype, tokenizer=tokenizer)
    reloaded = load_compressed(out, dtype=torch.float32)
    diff = None
    if check_ids is not None:
        with torch.no_grad():
            got = reloaded(input_ids=check_ids, use_cache=False).logits.float()
        if not torch.isfinite(got).all():
            raise RuntimeError(f"the quantized checkpoint in {out} gives non-finite logits")
        diff = float((got - want).abs().max())
    n_total = sum(p.numel() for p in model.parameters())
    report = QuantizeReport(
        scheme=cfg.label.split(" ", 1)[1], method=cfg.method,
        library=f"compressed-tensors {version('compressed-tensors')}",
        quantized={"linear": sum(v for k, v in qrep.matrices.items() if k != "experts"),
                   "expert_tensors": qrep.matrices.get("experts", 0)},
        params_quantized=qrep.params_quantized, params_kept=n_total - qrep.params_quantized,
        checkpoint_bytes_before=(checkpoint_bytes(unquantized) or 0) if unquantized else 0,
        checkpoint_bytes_after=info.checkpoint_bytes, max_abs_logit_diff=diff, experts_implementation="default",
        format="compressed-tensors", details={**qrep.to_dict(), "checkpoint_format": info.format})
    report.seconds = time.perf_counter() - t0
    return reloaded, report


def torchao_config(scheme: str):
    """The torchao config of one scheme (module docstring)."""
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, PerRow
    if scheme == "W8A16":
        return Int8WeightOnlyConfig(granularity=PerRow())
    if scheme == "FP8":
        return Float8WeightOnlyConfig()
    raise ValueError(f"quantize.scheme {scheme} has no torchao implementation here; use W8A16 or FP8")


def quantization_targets(model: nn.Module, scheme: str) -> dict[str, str]:
    """{parameter name: "linear" | "experts"} of what is quantized (module docstring); works on a meta model."""
    from compressor.families import resolve_adapter

    adapter = resolve_adapter(model)
    names = {id(m): n for n, m in model.named_modules()}
    skip = set()
    experts = {}
    for blk in adapter.moe_blocks(model):
        if blk.layout.transposed and scheme == "W8A16":
            raise ValueError(f"{type(model).__name__} stores its experts transposed ([E, in, out]), which torchao's "
                             "int8 tensors cannot multiply (no x @ W); use quantize.scheme FP8 for this family")
        skip |= {id(m) for m in (blk.router, blk.shared_gate) if m is not None}
        prefix = names[id(blk.experts)]
        for pname, p in blk.experts.named_parameters(recurse=False):
            if p.dim() == 3:
                experts[f"{prefix}.{pname}"] = "experts"
    linear = {}
    for layer in adapter.decoder_layers(model):
        for mod in layer.modules():
            if isinstance(mod, nn.Linear) and id(mod) not in skip:
                linear[f"{names[id(mod)]}.weight"] = "linear"
    return {**linear, **experts}


def _meta_model(src: Path):
    import transformers as tf
    config = tf.AutoConfig.from_pretrained(src)
    with torch.device("meta"):
        return tf.AutoModelForCausalLM.from_config(config)


def load_quantized(path: Path, *, dtype=None):
    """A torchao-quantized checkpoint through stock `from_pretrained`, with the experts implementation it runs."""
    import transformers as tf
    kw = {"dtype": dtype} if dtype is not None else {}
    return tf.AutoModelForCausalLM.from_pretrained(path, experts_implementation=QUANT_EXPERTS_IMPLEMENTATION,
                                                   **kw).eval()


def _pin_experts_implementation(out: Path) -> None:
    """Name the experts kernel torchao's tensors run in config.json (transformers' config reads the key)."""
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    cfg["experts_implementation"] = QUANT_EXPERTS_IMPLEMENTATION
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _holds_torchao_tensors(model: nn.Module) -> bool:
    """Any parameter a tensor subclass that stores other tensors (torchao's int8 / fp8 data + scales)."""
    return any(type(p.data) is not torch.Tensor and hasattr(p.data, "__tensor_flatten__") for p in model.parameters())


def eager_experts_if_quantized_(model: nn.Module) -> bool:
    """Switch `model` to the `eager` experts kernel when its weights are torchao tensors and it runs another one
    (a checkpoint quantized before config.json named the kernel); True when it switched.

        eager_experts_if_quantized_(AutoModelForCausalLM.from_pretrained("runs/7/checkpoint"))
    """
    current = getattr(model.config, "_experts_implementation", None)
    if current in (None, QUANT_EXPERTS_IMPLEMENTATION) or not _holds_torchao_tensors(model):
        return False
    model.set_experts_implementation(QUANT_EXPERTS_IMPLEMENTATION)
    return True


def is_quantized_checkpoint(path: Path) -> bool:
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (cfg.get("quantization_config") or {}).get("quant_method") == "torchao"


def quantize_checkpoint(src: str | Path, out: str | Path, cfg: QuantizeConfig, *,
                        check_ids: torch.Tensor | None = None) -> QuantizeReport:
    """Quantize the checkpoint folder `src` into `out` (module docstring). With `check_ids` [B, L], the reloaded
    quantized model's logits are compared with the unquantized ones; non-finite logits raise."""
    import transformers as tf
    from transformers import TorchAoConfig
    from torchao.quantization import FqnToConfig

    from compressor.evaluate.size import checkpoint_bytes

    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    skeleton = _meta_model(src)
    targets = quantization_targets(skeleton, cfg.scheme)
    base = torchao_config(cfg.scheme)
    ao = TorchAoConfig(FqnToConfig({name: base for name in targets}))
    with _quiet_torchao():
        model = tf.AutoModelForCausalLM.from_pretrained(src, quantization_config=ao,
                                                        experts_implementation=QUANT_EXPERTS_IMPLEMENTATION)
        missed = [n for n, p in model.named_parameters() if n in targets and type(p.data) is torch.Tensor]
        if missed:
            raise RuntimeError(f"torchao left {len(missed)} targeted tensors unquantized (e.g. {missed[0]})")
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
    _pin_experts_implementation(out)
    for name in _COPIED:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    counts = {"linear": sum(v == "linear" for v in targets.values()),
              "expert_tensors": sum(v == "experts" for v in targets.values())}
    shapes = dict(skeleton.named_parameters())
    n_quant = sum(shapes[n].numel() for n in targets)
    report = QuantizeReport(scheme=cfg.scheme, method=cfg.method, library=f"torchao {version('torchao')}",
                            quantized=counts, params_quantized=n_quant,
                            params_kept=sum(p.numel() for p in skeleton.parameters()) - n_quant,
                            checkpoint_bytes_before=checkpoint_bytes(src) or 0,
                            checkpoint_bytes_after=checkpoint_bytes(out) or 0)
    if check_ids is not None:
        report.max_abs_logit_diff = _check_reload(src, out, check_ids)
    report.seconds = time.perf_counter() - t0
    return report


@torch.no_grad()
def _check_reload(src: Path, out: Path, ids: torch.Tensor) -> float:
    import transformers as tf
    ref = tf.AutoModelForCausalLM.from_pretrained(src, experts_implementation="eager").eval()
    want = ref(input_ids=ids, use_cache=False).logits.float()
    del ref
    with _quiet_torchao():
        got = load_quantized(out)(input_ids=ids, use_cache=False).logits.float()
    if not torch.isfinite(got).all():
        raise RuntimeError(f"the quantized checkpoint in {out} gives non-finite logits")
    return float((got - want).abs().max())


class _quiet_torchao:
    """torchao logs one line per CUDA extension it cannot load (none exist on a CPU build); lowered to errors."""

    def __enter__(self):
        self._levels = {n: logging.getLogger(n).level for n in ("torchao", "transformers")}
        for n in self._levels:
            logging.getLogger(n).setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for n, level in self._levels.items():
            logging.getLogger(n).setLevel(level)

"""What a slimming recipe will leave, computed from the inspect summary alone (no model, no job): pure arithmetic.

Notation (from `compressor.inspect.inspect_model`): L layers, M of them MoE, E experts, top-k k, expert width I,
hidden H, vocabulary V, T = params_total, A = params_active (T minus the routed experts a token does not use).

    P_e  = (T - A) / (M (E - k))          parameters of one routed expert, read off the summary, biases included
    n_e  = 3H (+2 when P_e > 3HI: GPT-OSS-style gate/up/down biases)   parameters per intermediate neuron
    R    = E H                            router of one MoE layer
    emb  = V H (tied) or 2 V H (untied)   input embedding + LM head
    rest = (T - emb - H - M (E P_e + R)) / L      attention, norms, shared experts of one average layer

After the slimming settings (I' = round(r I), E' experts kept, d layers dropped, MoE layers first, s sparsity):

    P_e'  = P_e - (I - I') n_e
    T'    = T - d (rest + E P_e + R) - M' (E P_e - E' P_e' + (E - E') H)          M' = M - d
    A'    = A - d (rest + k P_e + R) - M' (k (P_e - P_e') + (E - E') H)
    bytes = T' * bytes per parameter of the dtype (zeros of unstructured sparsity are stored: the file keeps its size)
    FLOPs per token = 2 x active matmul parameters = 2 (A - [V H if untied])   (attention scores over the context
                      are left out; the input embedding is a lookup)
    nonzero A'_s = A' - s * (A' - emb - M' E' H - (2 L' + 1) H)       sparsity applies to the decoder's linear maps
    speed-up = FLOPs before / FLOPs after; with sparsity it is theoretical (it needs sparse kernels to materialise)

    quantized, format torchao (W8A16 / FP8, `compressor.quantize`): K = emb + M' E' H + (2 L' + 1) H kept in the
                      dtype (embeddings, routers, norms), Q = T' - K stored in 1 byte each, plus one float32 scale
                      per row of about H inputs:  bytes_q = Q + 4 Q / H + K * bytes per parameter
    quantized, format compressed-tensors: experts and the other linear maps at their schemes' bits per weight
                      (`compressed_checkpoint_bytes`)

    shape = ModelShape.from_summary(inspect_model(model) | {"tie_word_embeddings": True})
    est = estimate(shape, SlimSettings(expert_keep_ratio=0.5))
    est.params_active_after, est.checkpoint_bytes_after, est.speedup
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from compressor.feasibility import ModelLimits, check_slimming
from compressor.widths import align_width

DTYPE_BYTES = {"float32": 4, "float": 4, "float64": 8, "bfloat16": 2, "float16": 2, "half": 2, "int8": 1,
               "uint8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1}


def kept_width(width: int, keep_ratio: float) -> int:
    """I' = align_width(round(keep_ratio * I)), at least 1: the rule of `NeuronSlimConfig.target_width` followed by
    `FamilyAdapter.valid_expert_width` (kept torch-free here; a test checks the two agree)."""
    return align_width(max(1, min(width, int(math.floor(keep_ratio * width + 0.5)))))


def bytes_per_param(dtype: str) -> float:
    """Bytes of one stored parameter for a torch dtype name; `mixed(a,b)` takes the widest."""
    names = dtype.removeprefix("mixed(").removesuffix(")").split(",")
    sizes = [DTYPE_BYTES.get(n.strip().removeprefix("torch.")) for n in names]
    if not sizes or any(s is None for s in sizes):
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(sorted(DTYPE_BYTES))}")
    return float(max(sizes))


def _single(value, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"{name} differs between layers ({sorted(set(value))}); the estimate needs one value")
        value = value[0]
    return int(value)


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    moe_layers: int
    num_experts: int
    top_k: int
    expert_width: int
    hidden: int
    vocab: int
    params_total: int
    params_active: int
    bytes_per_param: float
    tied_embeddings: bool = False
    limits: ModelLimits | None = None      # routing groups and family refusals (from the summary), for feasibility

    @classmethod
    def from_summary(cls, summary: dict) -> "ModelShape":
        """From `inspect_model(...)`; `tie_word_embeddings` (from the config) is read when present."""
        moe = summary["moe_layers"]
        return cls(num_layers=int(summary["num_layers"]), moe_layers=len(moe) if isinstance(moe, list) else int(moe),
                   num_experts=_single(summary["num_experts"], "num_experts"), top_k=int(summary["top_k"]),
                   expert_width=_single(summary["expert_intermediate_size"], "expert_intermediate_size"),
                   hidden=int(summary["hidden_size"]), vocab=int(summary["vocab_size"]),
                   params_total=int(summary["params_total"]), params_active=int(summary["params_active"]),
                   bytes_per_param=bytes_per_param(str(summary.get("dtype", "float32"))),
                   tied_embeddings=bool(summary.get("tie_word_embeddings", False)),
                   limits=ModelLimits.from_summary(summary))

    @property
    def feasibility_limits(self) -> ModelLimits:
        """What `compressor.feasibility` checks the settings against (without a summary: no groups, no refusals)."""
        return self.limits or ModelLimits(family="the model", num_experts=self.num_experts, top_k=self.top_k,
                                          width=self.expert_width, num_layers=self.num_layers)

    # -- derived parts (formulas in the module docstring) -----------------------------------------------------------
    @property
    def expert_params(self) -> float:
        inactive = self.params_total - self.params_active
        unused = self.moe_layers * (self.num_experts - self.top_k)
        return inactive / unused if unused > 0 else 3.0 * self.hidden * self.expert_width

    @property
    def neuron_params(self) -> int:
        return 3 * self.hidden + (2 if self.expert_params > 3 * self.hidden * self.expert_width + 0.5 else 0)

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def layer_rest_params(self) -> float:
        moe = self.moe_layers * (self.num_experts * self.expert_params + self.num_experts * self.hidden)
        return (self.params_total - self.embedding_params - self.hidden - moe) / self.num_layers

    def matmul_params(self, active: float) -> float:
        return active - (0 if self.tied_embeddings else self.vocab * self.hidden)


@dataclass(frozen=True)
class SlimSettings:
    expert_keep_ratio: float = 1.0
    experts_keep: int | None = None
    layers_drop: int = 0
    sparsity: float = 0.0

    @classmethod
    def from_recipe(cls, slimming) -> "SlimSettings":
        """From a recipe's `slimming` section (a SlimmingConfig or its dict)."""
        d = slimming if isinstance(slimming, dict) else slimming.model_dump()
        return cls(expert_keep_ratio=float(d.get("expert_keep_ratio", 1.0)), experts_keep=d.get("experts_keep"),
                   layers_drop=int(d.get("layers_drop", 0)), sparsity=float(d.get("sparsity", 0.0)))


@dataclass(frozen=True)
class Estimate:
    params_total_before: int
    params_active_before: int
    params_total_after: int
    params_active_after: int
    nonzero_total_after: int
    nonzero_active_after: int
    expert_width_after: int
    experts_after: int
    layers_after: int
    moe_layers_after: int
    checkpoint_bytes_before: int
    checkpoint_bytes_after: int
    flops_per_token_before: float
    flops_per_token_after: float          # structural cuts only
    flops_per_token_sparse: float         # also skipping the zeros (needs sparse kernels)
    notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.flops_per_token_before / self.flops_per_token_after

    @property
    def speedup_sparse(self) -> float:
        return self.flops_per_token_before / self.flops_per_token_sparse

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup, "speedup_sparse": self.speedup_sparse}


def check_settings(shape: ModelShape, s: SlimSettings, *, stages: int = 1) -> None:
    """Refuse settings the slimming operations would refuse, with the reason (ValueError): the value ranges here,
    what this model can take by the feasibility rules (`compressor.feasibility`, the ones the pipeline applies)."""
    if not 0.0 < s.expert_keep_ratio <= 1.0:
        raise ValueError(f"expert keep ratio {s.expert_keep_ratio} must be in (0, 1]")
    if not 0.0 <= s.sparsity < 1.0:
        raise ValueError(f"sparsity {s.sparsity} must be in [0, 1)")
    if s.layers_drop < 0 or (s.experts_keep is not None and s.experts_keep < 1):
        raise ValueError(f"layers dropped must be >= 0 and experts kept >= 1; got {s.layers_drop}, {s.experts_keep}")
    check_slimming(shape.feasibility_limits, s, stages=stages)


def estimate(shape: ModelShape, settings: SlimSettings, *, stages: int = 1) -> Estimate:
    """Parameters, checkpoint bytes and active FLOPs after `settings` (formulas in the module docstring), once
    `check_settings` accepts them for a recipe of `stages` stages."""
    check_settings(shape, settings, stages=stages)
    H, E, k, M, L = shape.hidden, shape.num_experts, shape.top_k, shape.moe_layers, shape.num_layers
    p_e, rest = shape.expert_params, shape.layer_rest_params
    width = kept_width(shape.expert_width, settings.expert_keep_ratio)
    p_e2 = p_e - (shape.expert_width - width) * shape.neuron_params
    e2 = settings.experts_keep or E
    d = settings.layers_drop
    d_moe, d_dense = min(d, M), max(d - M, 0)
    m2, l2 = M - d_moe, L - d
    total = (shape.params_total - d_moe * (rest + E * p_e + E * H) - d_dense * rest
             - m2 * (E * p_e - e2 * p_e2 + (E - e2) * H))
    active = (shape.params_active - d_moe * (rest + k * p_e + E * H) - d_dense * rest
              - m2 * (k * (p_e - p_e2) + (E - e2) * H))
    fixed = shape.embedding_params + m2 * e2 * H + (2 * l2 + 1) * H      # never sparsified
    s = settings.sparsity
    nz_total, nz_active = total - s * (total - fixed), active - s * (active - fixed)
    notes = []
    if d_dense:
        notes.append(f"{d} layers dropped but only {M} are MoE layers: the rest are counted as dense layers")
    if d and M < L:
        notes.append("dropped layers are assumed to be MoE layers of average size; the job drops the layers with "
                     "the lowest block influence")
    if s:
        notes.append("unstructured zeros are stored: the checkpoint keeps its size, and the sparse speed-up needs "
                     "sparse kernels")
    bpp = shape.bytes_per_param
    return Estimate(
        params_total_before=shape.params_total, params_active_before=shape.params_active,
        params_total_after=round(total), params_active_after=round(active),
        nonzero_total_after=round(nz_total), nonzero_active_after=round(nz_active),
        expert_width_after=width, experts_after=e2, layers_after=l2, moe_layers_after=m2,
        checkpoint_bytes_before=round(shape.params_total * bpp), checkpoint_bytes_after=round(total * bpp),
        flops_per_token_before=2.0 * shape.matmul_params(shape.params_active),
        flops_per_token_after=2.0 * shape.matmul_params(active),
        flops_per_token_sparse=2.0 * shape.matmul_params(nz_active), notes=notes)


QUANT_WEIGHT_BYTES = {"W8A16": 1.0, "FP8": 1.0}      # format torchao: one byte per weight, a float32 scale per row


def quantized_checkpoint_bytes(shape: ModelShape, est: Estimate, quantize) -> int:
    """Checkpoint bytes after slimming to `est` and quantizing by `quantize`: a scheme name (format torchao, the
    formula of the module docstring) or a recipe's quantize section (dict or QuantizeConfig; see
    `compressed_checkpoint_bytes`)."""
    if not isinstance(quantize, str):
        q = quantize if isinstance(quantize, dict) else quantize.model_dump()
        if q.get("format", "compressed-tensors") == "compressed-tensors":
            return compressed_checkpoint_bytes(shape, est, q)[0]
        quantize = q.get("scheme", "W8A16")
    if quantize not in QUANT_WEIGHT_BYTES:
        raise ValueError(f"no size rule for quantize.scheme {quantize} in format torchao; known: "
                         f"{', '.join(QUANT_WEIGHT_BYTES)}")
    H = shape.hidden
    kept = shape.embedding_params + est.moe_layers_after * est.experts_after * H + (2 * est.layers_after + 1) * H
    q = est.params_total_after - kept
    return round(q * QUANT_WEIGHT_BYTES[quantize] + 4 * q / H + kept * shape.bytes_per_param)


def compressed_checkpoint_bytes(shape: ModelShape, est: Estimate, quantize: dict) -> tuple[int, list[str]]:
    """(bytes, notes) of the compressed-tensors checkpoint of a recipe's quantize section (compressor.quantization):

        X = M' E' P_e'                    routed experts' parameters after slimming (P_e' = P_e - (I - I') n_e)
        K = emb + M' E' H + (2 L' + 1) H  kept in the dtype (embeddings, routers, norms)
        R = T' - K - X                    attention, shared experts and dense MLPs
        bytes = X b_experts / 8 + R b_attention / 8 + K * bytes per parameter
    with b = the scheme's stored bits per weight, scales included (`WeightScheme.bits_per_weight`: W4A16 group 128
    = 4 + 16/128; W8A16 per channel = 8; FP8 = 8; a kept class = 8 * bytes per parameter). R is counted at the
    attention's scheme (the summary does not split it by class); a note says when the others differ."""
    bpp = shape.bytes_per_param
    P_e = shape.expert_params - (shape.expert_width - est.expert_width_after) * shape.neuron_params
    H = shape.hidden
    X = est.moe_layers_after * est.experts_after * P_e
    K = shape.embedding_params + est.moe_layers_after * est.experts_after * H + (2 * est.layers_after + 1) * H
    R = max(0.0, est.params_total_after - K - X)
    default = quantize.get("scheme", "W4A16")
    notes = []
    rest = {k: quantize.get(k) or default for k in ("attention", "shared_experts", "dense_mlp")}
    if len(set(rest.values())) > 1:
        notes.append("shared experts and dense MLPs are counted at the attention's scheme")
    b_experts, b_attention = scheme_bits(shape, quantize, "experts"), scheme_bits(shape, quantize, "attention")
    total = X * b_experts / 8 + R * b_attention / 8 + K * bpp
    return round(total), notes


def scheme_bits(shape: ModelShape, quantize: dict, klass: str) -> float:
    """Stored bits per weight of one class (experts, attention, ...) under a compressed-tensors quantize section:
    its scheme's `bits_per_weight` (scales included), or 8 * bytes per parameter for a kept class."""
    from compressor.quantization.scheme import SCHEMES, scheme_named

    name = quantize.get(klass) or quantize.get("scheme", "W4A16")
    if name == "keep":
        return 8 * shape.bytes_per_param
    scheme = SCHEMES[name] if SCHEMES[name].type == "float" else scheme_named(name,
                                                                              group_size=quantize.get("group_size"))
    return scheme.bits_per_weight(dtype_bytes=int(shape.bytes_per_param))

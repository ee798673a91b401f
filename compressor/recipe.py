"""Recipes: one versioned, validated document that describes a whole compression job.

The CLI (`python -m compressor run RECIPE`), the UI and the workers all build a `Recipe`, store it as JSON/YAML
and hand it to `compressor.pipeline.run_recipe`, so a run made in one place repeats exactly in another.

    recipe = Recipe.model_validate({"model": "demo", "slimming": {"expert_keep_ratio": 0.5}})
    text = recipe.to_yaml()
    assert Recipe.from_yaml(text) == recipe
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from compressor.methods import (DISTILL_LOSSES, EXPERT_MERGES, EXPERT_SCORES, NEURON_SCORES, QUANT_METHODS,
                                SPARSITY_ALLOCATIONS, literal)
from compressor.quantization.scheme import SCHEME_NAMES

# The choices come from the method registries (compressor/methods.py), so a new method needs no edit here.
NeuronScore = literal(NEURON_SCORES)
ExpertScore = literal(EXPERT_SCORES)
ExpertMerge = literal(EXPERT_MERGES)
SparsityAllocation = literal(SPARSITY_ALLOCATIONS)
DistillLoss = literal(DISTILL_LOSSES)
QuantMethod = literal(QUANT_METHODS)


def _choices(registry) -> str:
    return "; ".join(f"{m.name} = {m.formula}" for m in registry.values())

RECIPE_VERSION = 4
MAX_STEPS = 10_000_000          # optimizer steps, warm-up steps
MAX_TOKENS = 50_000_000         # calibration / evaluation tokens
MAX_SEED = 2**32 - 1            # what numpy and every RNG the pipeline seeds accept
MAX_PATH = 4096                 # characters of a model source or task path (PATH_MAX on Linux)
# Version 2 added distill.final_stage_share (default 0.8: the last stage gets 80% of the distillation steps).
# A version-1 document is upgraded on load with final_stage_share = null, the even split it ran with.
# Version 3 added execution.device (default auto: a GPU when there is one). Versions 1 and 2 are upgraded with
# device = cpu, where every job ran before devices existed.
# Version 4 made quantize a compressed-tensors stage (default scheme W4A16, method gptq) with per-class schemes and
# format torchao for the old stage. A quantize block of versions 1 to 3 is upgraded with format torchao, scheme
# W8A16 and method rtn unless it named them: the torchao W8A16 / FP8 round to nearest it ran.
# execution.nproc came within version 4, without a bump: its default 1 is how every older recipe ran.


class RecipeError(ValueError):
    """A recipe that does not validate; the message names every offending field."""


class _Strict(BaseModel):
    """Unknown fields, inf and nan are refused; every number has finite bounds, so a recipe fails here, not late in
    the worker."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class CalibrationConfig(_Strict):
    """Tokens used to score experts, neurons and layers: `tokens // seq_len` windows of `seq_len` tokens."""

    tokens: int = Field(32768, ge=64, le=MAX_TOKENS)
    seq_len: int = Field(256, ge=8, le=32768)
    batch_size: int = Field(8, ge=1, le=1024)

    @model_validator(mode="after")
    def _enough_tokens(self):
        if self.tokens < self.seq_len:
            raise ValueError(f"calibration.tokens ({self.tokens}) must be at least calibration.seq_len ({self.seq_len})")
        return self


class SlimmingConfig(_Strict):
    """What to cut. Every field at its default leaves the model unchanged."""

    expert_keep_ratio: float = Field(1.0, gt=0.0, le=1.0, description="share of neurons kept in every expert")
    neuron_score: NeuronScore = Field("taylor", description=_choices(NEURON_SCORES))
    experts_keep: int | None = Field(None, ge=1, le=4096, description="experts kept per MoE layer; null = all")
    expert_score: ExpertScore = Field("reap", description=_choices(EXPERT_SCORES))
    expert_merge: ExpertMerge | None = Field(
        None, description="fold the experts into experts_keep instead of dropping them (null = prune by "
                          "expert_score): " + _choices(EXPERT_MERGES))
    merge_group_size: int = Field(16, ge=1, le=4096, description="REAM's C: the most experts folded into one")
    layers_drop: int = Field(0, ge=0, le=1024, description="decoder layers removed")
    sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="unstructured (Wanda) sparsity of the remaining linear maps")
    sparsity_allocation: SparsityAllocation = Field(
        "owl", description="how sparsity is spread over layers (owl is the default until DLP wins on "
                           "bench/quality.py): " + _choices(SPARSITY_ALLOCATIONS))
    sparsity_dlp_statistic: Literal["median", "mean"] = Field(
        "median", description="DLP's layer score: median (paper) or mean (its repository's unstructured path)")
    sparsity_calibration: Literal["sequential", "dense"] = Field(
        "sequential", description="sequential = each layer's Wanda norms measured with the layers below already "
                                  "pruned (Wanda, OWL, DLP); dense = every layer's norms from the unpruned model")

    @model_validator(mode="after")
    def _merge_needs_a_count(self):
        if self.expert_merge is not None and self.experts_keep is None:
            raise ValueError(f"slimming.expert_merge ({self.expert_merge}) folds the experts into experts_keep: "
                             "set slimming.experts_keep")
        if self.expert_merge is not None and self.sparsity > 0:
            raise ValueError("slimming.expert_merge and slimming.sparsity in one recipe: the sparsity's layer "
                             "statistics would need the merged layers before they exist. Merge first, then sparsify "
                             "the merged checkpoint with a second recipe (model: the first run's checkpoint)")
        return self

    @property
    def is_identity(self) -> bool:
        return (self.expert_keep_ratio == 1.0 and self.experts_keep is None and self.layers_drop == 0
                and self.sparsity == 0.0)


class DistillConfig(_Strict):
    """Knowledge distillation from the teacher (the original model) into the slimmed student."""

    steps: int = Field(300, ge=0, le=MAX_STEPS, description="total optimizer steps over all stages")
    lr: float = Field(3.0e-4, gt=0.0, le=1.0)
    temperature: float = Field(2.0, gt=0.0, le=100.0,
                               description="T of p = softmax(z / T); the KD term is multiplied by T^2 (Hinton et al. "
                                           "2015), which TRL's GKD does not do, so at T = 2 `ce_weight` is 4x weaker "
                                           "relative to the KD term than the same weight in TRL")
    loss: DistillLoss = Field(
        "forward_kl", description="KD divergence, T^2 * mean over tokens (compressor.distill.losses): "
                                  + _choices(DISTILL_LOSSES))
    jsd_beta: float = Field(0.5, ge=0.0, le=1.0)
    ce_weight: float = Field(0.0, ge=0.0, le=100.0)
    hidden_mse_weight: float = Field(0.0, ge=0.0, le=100.0)
    on_policy: float = Field(0.0, ge=0.0, le=1.0)
    batch_size: int = Field(4, ge=1, le=1024, description="windows per micro-batch; 4 x 256 keeps the default "
                                                            "recipe under 10 minutes on 2 CPU cores")
    seq_len: int = Field(256, ge=8, le=32768)
    grad_accum: int = Field(1, ge=1, le=1024)
    warmup_steps: int = Field(10, ge=0, le=MAX_STEPS)
    weight_decay: float = Field(0.0, ge=0.0, le=10.0)
    clip_grad: float = Field(1.0, gt=0.0, le=1e6, description="gradient-norm clip")
    final_stage_share: float | None = Field(
        0.8, gt=0.0, le=1.0, description="share of `steps` the last stage gets when stages > 1; the earlier stages "
                                         "split the rest evenly; null = every stage the same share (version 1)")
    teacher: Literal["original", "previous_stage"] = "original"
    cache_teacher_topk: int = Field(0, ge=0, le=2**20,
                                    description="0 = teacher in memory; k > 0 = cache teacher top-k logits on disk")
    bf16: bool = Field(False, description="bf16 autocast where the hardware supports it")
    blockwise_steps: int = Field(0, ge=0, le=MAX_STEPS,
                                 description="layer-local recovery of layer-by-layer runs: AdamW steps per cut MoE "
                                             "block towards the original block's output (compressor.stream.blockwise)")
    blockwise_lr: float = Field(1.0e-4, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _cache_needs_plain_logits(self):
        if self.cache_teacher_topk and (self.on_policy > 0 or self.hidden_mse_weight > 0):
            raise ValueError("distill.cache_teacher_topk keeps only the teacher's top-k logits, but on_policy and "
                             "hidden_mse_weight need the teacher in memory; set cache_teacher_topk to 0 or turn "
                             "them off")
        return self


class LmEvalConfig(_Strict):
    """lm-evaluation-harness tasks (`compressor.evaluate.harness`): the shipped local tasks (`sotu_next_sentence`,
    `sotu_cloze`, offline) or any lm-eval task name (its data set comes from the hub). Empty `tasks` runs nothing."""

    tasks: list[Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")]] = Field(
        default_factory=list, max_length=32)
    limit: int | None = Field(None, ge=1, le=1_000_000, description="examples per task; null = all")
    num_fewshot: int | None = Field(None, ge=0, le=64, description="few-shot examples; null = the task's default")
    backend: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="auto = vllm when it is installed and CUDA is available, else hf (the model in memory)")
    batch_size: int = Field(8, ge=1, le=1024)


class EvaluateConfig(_Strict):
    perplexity: bool = True
    speed: bool = True
    tokens: int = Field(16384, ge=64, le=MAX_TOKENS)
    seq_len: int = Field(256, ge=8, le=32768)
    tasks: list[Annotated[str, Field(max_length=MAX_PATH)]] = Field(
        default_factory=list, max_length=64, description="paths of local JSONL multiple-choice tasks")
    lm_eval: LmEvalConfig = Field(default_factory=LmEvalConfig)


class GPTQConfig(_Strict):
    """GPTQ's settings (`compressor.quantization.gptq`; IST-DASLab/gptq and llm-compressor defaults)."""

    block_size: int = Field(128, ge=1, le=8192, description="columns per lazy batch update")
    percdamp: float = Field(0.01, gt=0.0, le=1.0, description="dampening: H += percdamp * mean(diag H) * I")
    act_order: bool = Field(False, description="visit columns by decreasing H_jj (groups fixed beforehand)")
    min_expert_tokens: int = Field(64, ge=1, le=MAX_TOKENS,
                                   description="routed experts that saw fewer calibration tokens are rounded to "
                                               "nearest (counted in the report)")


ClassScheme = Literal[SCHEME_NAMES + ("keep",)]


class QuantizeConfig(_Strict):
    """Optional last stage: weight-only quantization of the exported model.

    format compressed-tensors (default, `compressor.quantization`): `scheme` for every quantized class, overridden
    per class by `experts`, `shared_experts`, `attention`, `dense_mlp` (a scheme name or `keep`); method rtn (round
    to nearest) or gptq (layer by layer on the recipe's calibration data, each expert on its routed tokens).
    W4A16 = int4 symmetric, group 128; W8A16 = int8 symmetric per channel; FP8 = float8 e4m3 per channel;
    FP8_BLOCK = float8 per 128x128 tile (not for experts). `group_size` overrides the int schemes' grid (a number or
    `channel`). Saved as compressed-tensors (what vLLM serves); stock transformers reloads it.
    format torchao (`compressor.quantize`, recipes before version 4): rtn W8A16 / FP8 through TorchAoConfig, the
    weights stay int8 / fp8 in memory when transformers loads them. Routers, norms, embeddings and the LM head are
    always kept."""

    scheme: Literal[SCHEME_NAMES] = "W4A16"
    method: QuantMethod = Field("gptq", description=_choices(QUANT_METHODS))
    format: Literal["compressed-tensors", "torchao"] = "compressed-tensors"
    group_size: int | Literal["channel"] | None = Field(
        None, description="int schemes: columns per scale (a divisor of every quantized weight's input size) or "
                          "channel; null = the scheme's own (128 for W4A16, channel for W8A16)")
    experts: ClassScheme | None = Field(None, description="routed experts' scheme; null = `scheme`")
    shared_experts: ClassScheme | None = Field(None, description="shared experts' scheme; null = `scheme`")
    attention: ClassScheme | None = Field(None, description="attention projections' scheme; null = `scheme`")
    dense_mlp: ClassScheme | None = Field(None, description="dense MLPs' scheme; null = `scheme`")
    gptq: GPTQConfig = Field(default_factory=GPTQConfig)

    def class_schemes(self) -> dict[str, str | None]:
        """{class: scheme name or None (kept)} after the per-class overrides."""
        out = {}
        for klass in ("experts", "shared_experts", "attention", "dense_mlp"):
            name = getattr(self, klass) or self.scheme
            out[klass] = None if name == "keep" else name
        return out

    @property
    def label(self) -> str:
        """A short description: "GPTQ W4A16", or "GPTQ W4A16, attention W8A16" with the classes that differ."""
        differ = [f"{k.replace('_', ' ')} {getattr(self, k)}" for k in ("experts", "shared_experts", "attention",
                                                                         "dense_mlp")
                  if getattr(self, k) not in (None, self.scheme)]
        return f"{self.method.upper()} {self.scheme}" + "".join(f", {d}" for d in differ)

    @model_validator(mode="after")
    def _supported(self):
        overrides = [k for k in ("experts", "shared_experts", "attention", "dense_mlp") if getattr(self, k)]
        if self.format == "torchao":
            if self.scheme not in ("W8A16", "FP8"):
                raise ValueError(f"format torchao takes W8A16 or FP8 (torchao's int4 needs CUDA); for "
                                 f"{self.scheme} use format compressed-tensors")
            if self.method != "rtn":
                raise ValueError("format torchao rounds to nearest only: set method rtn, or use format "
                                 "compressed-tensors for gptq")
            if overrides or self.group_size is not None:
                raise ValueError("format torchao has one per-row scheme for everything: remove group_size and the "
                                 "per-class schemes, or use format compressed-tensors")
            return self
        schemes = self.class_schemes()
        if not any(schemes.values()):
            raise ValueError("every class is `keep`: nothing would be quantized; give one class a scheme or set "
                             "quantize to null")
        if schemes["experts"] is None:
            raise ValueError("experts: keep is not readable in this format: transformers 5.25 dequantizes every fused "
                             "expert of a compressed-tensors checkpoint while loading and fails on dense ones; give "
                             "the experts a scheme (W8A16 is the mildest) or use format torchao")
        if schemes["experts"] == "FP8_BLOCK":
            raise ValueError("experts: FP8_BLOCK experts do not reload in stock transformers (it multiplies FP8 "
                             "experts by a per-row scale); use FP8 for experts")
        if self.group_size is not None:
            if isinstance(self.group_size, int) and self.group_size < 1:
                raise ValueError("group_size must be a positive number of columns or `channel`")
            if all(n in ("FP8", "FP8_BLOCK") for n in schemes.values() if n):
                raise ValueError("group_size applies to the int schemes (W4A16, W8A16); FP8 takes none")
        return self

    def plan(self):
        """The `compressor.quantization.targets.QuantPlan` of this stage (compressed-tensors format)."""
        from compressor.quantization.scheme import SCHEMES, scheme_named
        from compressor.quantization.targets import GPTQSettings, QuantPlan
        schemes = {}
        for klass, name in self.class_schemes().items():
            if name is None:
                schemes[klass] = None
            elif SCHEMES[name].type == "float":
                schemes[klass] = SCHEMES[name]
            else:
                schemes[klass] = scheme_named(name, group_size=self.group_size)
        g = self.gptq
        return QuantPlan.of(schemes, method=self.method,
                            gptq=GPTQSettings(block_size=g.block_size, percdamp=g.percdamp, act_order=g.act_order,
                                              min_expert_tokens=g.min_expert_tokens))


class ExecutionConfig(_Strict):
    """How the job runs: `streaming` auto | on | off (`compressor.engine.residency`: layer by layer, one decoder layer in
    memory, when the model does not fit comfortably). Streamed jobs score, cut and evaluate; global distillation and
    multi-stage slimming need the whole model in memory and are refused for them before any work.

    `device` (`compressor.device`): auto = a GPU when torch.cuda.is_available(), else the CPU; cpu; cuda; cuda:N. In
    memory the model, calibration and evaluation run on it; layer by layer only the current decoder layer does (the
    activations between layers and the embeddings / head stay on the CPU). The studio sends a cuda run to the GPU
    workers' queue (docs/workers.md)."""

    streaming: Literal["auto", "on", "off"] = "auto"
    device: str = Field("auto", max_length=16, description="auto | cpu | cuda | cuda:N")
    spill_mb: int | None = Field(None, ge=0, le=2**30,
                                 description="layer by layer: activations between layers past this many MB go to "
                                             "memory-mapped files in the run's folder (compressor.stream.spill); "
                                             "null = $MOE_STUDIO_SPILL_MB, else a quarter of the machine's memory; "
                                             "0 = always")
    nproc: int = Field(1, ge=1, le=1024, description="processes global distillation shards the student over "
                                                     "(FSDP2, compressor.distill.sharded); 1 = one process")

    @model_validator(mode="after")
    def _known_device(self):
        from compressor.device import check_device_spec      # torch-free
        check_device_spec(self.device)
        return self


class Recipe(_Strict):
    """A whole job. `model` is `demo`, a local directory, an archive (.zip/.tar.gz), or a hub id."""

    version: int = RECIPE_VERSION
    model: str = Field("demo", max_length=MAX_PATH)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    slimming: SlimmingConfig = Field(default_factory=SlimmingConfig)
    stages: int = Field(3, ge=1, le=32)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    quantize: QuantizeConfig | None = Field(None, description="weight-only quantization of the exported model; "
                                                               "null = none")
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data):
        """An older document is read as the run it describes: version 1 split the distillation steps evenly over
        the stages (final_stage_share null); versions 1 and 2 ran on the CPU (execution.device cpu); versions 1 to 3
        quantized with torchao, W8A16 round to nearest unless they said otherwise."""
        if not isinstance(data, dict) or data.get("version") not in (1, "1", 2, "2", 3, "3"):
            return data
        out = {**data, "version": RECIPE_VERSION}
        version = int(data["version"])
        distill, execution = data.get("distill") or {}, data.get("execution") or {}
        if version == 1 and isinstance(distill, dict):    # anything else is left for validation
            out["distill"] = {"final_stage_share": None, **distill}
        if version <= 2 and isinstance(execution, dict):
            out["execution"] = {"device": "cpu", **execution}
        if isinstance(data.get("quantize"), dict):
            out["quantize"] = {"format": "torchao", "scheme": "W8A16", "method": "rtn", **data["quantize"]}
        return out

    @model_validator(mode="after")
    def _known_version(self):
        if self.version != RECIPE_VERSION:
            raise ValueError(f"version {self.version} is not supported; this studio reads recipe versions 1 to "
                             f"{RECIPE_VERSION} (it writes {RECIPE_VERSION})")
        if not self.model.strip():
            raise ValueError("model must name `demo`, a directory, an archive or a hub id")
        return self

    # -- (de)serialisation ------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, data: dict) -> "Recipe":
        """Validate a dict; raise `RecipeError` whose message lists `field.path: problem` for every error."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise RecipeError(_explain(exc)) from None

    @classmethod
    def from_yaml(cls, text: str) -> "Recipe":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"recipe is not valid YAML/JSON: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise RecipeError("recipe must be a mapping of fields (model, calibration, slimming, ...)")
        return cls.parse(data)

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        return cls.from_yaml(Path(path).read_text())

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "recipe"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see `python -m compressor recipe --example`)"
        lines.append(f"{where}: {msg}")
    return "invalid recipe: " + "; ".join(lines)

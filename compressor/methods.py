"""The method registries: every expert score, neuron score, sparsity allocation, distillation loss and expert merge, by
name.

Each entry names the function that computes it (`target`, "module:qualname", imported only when used, so this module
stays free of torch and the web process can list the methods), a short label and formula for legends and --help,
and what it needs (a Taylor pass, the layer statistic it reads). The recipe's Literal types, the CLI choices, the UI
dropdowns and legends, `slimming.apply.analysis_needs`, `ExpertScores.score`, `NeuronScores.score`,
`slimming.sparsify.allocate` and `distill.losses.divergence` all read these dicts; adding a method is its function,
its entry here and its test.

    from compressor.methods import EXPERT_SCORES, names
    names(EXPERT_SCORES)                       # ("reap", "frequency", ...)
    EXPERT_SCORES["reap"].load()(report.experts)   # the [L, E] REAP scores
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Literal


@dataclass(frozen=True)
class Method:
    name: str
    label: str                 # short name for legends and dropdowns
    formula: str               # one line; the target's docstring gives the whole definition and its source
    target: str                # "module:qualname" of the function (or property) that computes it
    taylor: bool = False       # needs gradients of the calibration loss (a Taylor pass)
    reads: str = ""            # sparsity allocations: the layer statistic they read ("outliers", "scores", "")

    def load(self) -> Callable:
        """The function; a property's getter for scores defined as properties of the score tables."""
        module, _, qualname = self.target.partition(":")
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj.fget if isinstance(obj, property) else obj

    @property
    def legend(self) -> str:
        return f"{self.label}: {self.formula}"


def _registry(*methods: Method) -> dict[str, Method]:
    return {m.name: m for m in methods}


_SCORES = "compressor.importance.scores"
EXPERT_SCORES = _registry(
    Method("reap", "REAP", "mean over routed tokens of g_e(x) * ||f_e(x)||_2", f"{_SCORES}:ExpertScores.reap"),
    Method("frequency", "routing frequency", "|X_e| / tokens", f"{_SCORES}:ExpertScores.frequency"),
    Method("weighted_frequency", "weighted frequency", "sum over X_e of g_e(x) / tokens",
           f"{_SCORES}:ExpertScores.weighted_frequency"),
    Method("man", "MAN (mean output norm)", "mean over X_e of ||f_e(x)||_2", f"{_SCORES}:ExpertScores.man"),
    Method("ean_sum", "EAN (summed output norm)", "sum over X_e of ||f_e(x)||_2", f"{_SCORES}:ExpertScores.ean_sum"),
    Method("taylor", "Taylor |w * sum g|", "(1/N) sum over the expert's weights of |w * sum_b dL_b/dw|",
           f"{_SCORES}:ExpertScores.taylor", taylor=True),
    Method("taylor_per_batch", "Taylor per batch", "(1/N) sum_b sum over the expert's weights of |w * dL_b/dw|",
           f"{_SCORES}:ExpertScores.taylor_per_batch", taylor=True),
)

NEURON_SCORES = _registry(
    Method("taylor", "Taylor |w * sum g|", "(1/N) sum over the neuron's gate/up rows and down column of |w * sum_b g_b|",
           f"{_SCORES}:NeuronScores.taylor", taylor=True),
    Method("taylor_per_batch", "Taylor per batch", "(1/N) sum_b sum over the neuron's weights of |w * g_b|",
           f"{_SCORES}:NeuronScores.taylor_per_batch", taylor=True),
    Method("activation", "activation x down norm", "mean over X_e of |h_e(x)_i| * ||Wd_e[:, i]||_2",
           f"{_SCORES}:NeuronScores.activation"),
)

_SPARSIFY = "compressor.slimming.sparsify"
SPARSITY_ALLOCATIONS = _registry(
    Method("uniform", "uniform", "every layer gets the target sparsity S", f"{_SPARSIFY}:allocate_uniform"),
    Method("owl", "OWL", "keep more where the Wanda outlier share D_l is larger (lambda 0.08, M 5)",
           f"{_SPARSIFY}:allocate_owl", reads="outliers"),
    Method("dlp", "DLP", "keep more where r_l = 1 - s_l / sum(s) is larger, s_l = median (or mean) Wanda score",
           f"{_SPARSIFY}:allocate_dlp", reads="scores"),
)

_LOSSES = "compressor.distill.losses"
DISTILL_LOSSES = _registry(
    Method("forward_kl", "forward KL", "KL(teacher || student), mean-seeking", f"{_LOSSES}:forward_kl"),
    Method("reverse_kl", "reverse KL", "KL(student || teacher), mode-seeking", f"{_LOSSES}:reverse_kl"),
    Method("jsd", "generalised JSD", "beta KL(t || m) + (1 - beta) KL(s || m), m = beta t + (1 - beta) s",
           f"{_LOSSES}:jsd_loss"),
)

_MERGE = "compressor.slimming.merge"
EXPERT_MERGES = _registry(
    Method("ream", "REAM", "REAP centroids take their C most similar experts (outputs + router); neurons aligned; "
           "REAP-weighted fold", f"{_MERGE}:plan_ream"),
    Method("hc_smoe", "HC-SMoE", "average-linkage clusters of mean expert outputs; frequency-weighted fold",
           f"{_MERGE}:plan_hc_smoe"),
    Method("m_smoe", "M-SMoE", "most-routed experts lead, others join the nearest; neurons aligned; "
           "frequency-weighted fold", f"{_MERGE}:plan_m_smoe"),
)

_QUANT = "compressor.quantization"
QUANT_METHODS = _registry(
    Method("rtn", "round to nearest", "w_hat = s * (clamp(round(w / s + z)) - z), min / max scale per group",
           f"{_QUANT}.grid:rtn"),
    Method("gptq", "GPTQ", "round column by column, each error spread over the later columns by H = 2 X X^T "
                           "(Frantar et al. 2022)", f"{_QUANT}.gptq:gptq_quantize"),
)

REGISTRIES = {"expert score": EXPERT_SCORES, "neuron score": NEURON_SCORES,
              "sparsity allocation": SPARSITY_ALLOCATIONS, "distillation loss": DISTILL_LOSSES,
              "expert merge": EXPERT_MERGES, "quantization method": QUANT_METHODS}


def names(registry: dict[str, Method]) -> tuple[str, ...]:
    return tuple(registry)


def literal(registry: dict[str, Method]):
    """The `Literal[...]` type of the registry's names, for pydantic fields."""
    return Literal[names(registry)]


def method(registry: dict[str, Method], name: str) -> Method:
    """The entry called `name`, or a ValueError naming the registry and the choices."""
    try:
        return registry[name]
    except KeyError:
        kind = next((k for k, r in REGISTRIES.items() if r is registry), "method")
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(registry)}") from None

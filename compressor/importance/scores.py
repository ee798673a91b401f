"""Score containers: float64 running sums in dataclasses, divided on read, saved as tables + exact tensors.

`ExpertScores` is per MoE layer x expert, `NeuronScores` per MoE layer x expert x neuron, `LayerScores` per decoder
layer; `ImportanceReport` bundles them with metadata. Row l of an expert / neuron tensor is MoE layer
`layers[l]` (a decoder-layer index: dense layers such as DeepSeek's first one have no row).

    report.experts.reap                    # [L, E] float64: S_e = mean_{x in X_e} g_e(x) ||f_e(x)||_2
    report.neurons.taylor                  # [L, E, I] float64: (1/N) |w * sum_b dL_b/dw| summed over the neuron
    report.neurons.activation              # [L, E, I] float64
    frames = report.to_frames()            # {"experts": DataFrame, "neurons": ..., "layers": ...} long format
    report.save("scores/"); again = ImportanceReport.load("scores/")   # tensors reload exactly
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from compressor.importance import formulas as M
from compressor.methods import EXPERT_SCORES, NEURON_SCORES, method, names

SCORES_VERSION = 3
# Version 3: the layers' dlp / owl come from `importance.wanda_stats.layer_statistics` (float32 Wanda scores, the path
# sparsify_ allocates with), were float64 scores of a second implementation.
# Version 2: "taylor" is |w * sum_b g_b| (LLM-Pruner), was sum_b |w * g_b| (now "taylor_per_batch"); the layers' `dlp`
# is the median Wanda score of the layer, was the mean. Version-1 folders and cache entries are not read.
EXPERT_SCORE_NAMES = names(EXPERT_SCORES)         # the registries: compressor/methods.py
NEURON_SCORE_NAMES = names(NEURON_SCORES)
TENSOR_FILE = "scores.safetensors"
SUMMARY_FILE = "summary.json"
TABLE_FORMATS = ("csv", "parquet")


@dataclass
class ExpertScores:
    """Per MoE layer x expert, [L, E] float64 sums over non-padding tokens.

    counts = |X_e|, gate_sum = sum g_e, reap_sum = sum g_e ||f_e||, man_sum = sum ||f_e||, max_abs = max |f_e|
    (super-expert guard). With L_b the summed next-token loss of batch b and g_b = dL_b/dw:
    taylor_sum = |w * sum_b g_b| summed over the expert's tensors (LLM-Pruner's rule), taylor_per_batch_sum =
    sum_b |w * g_b| summed likewise; both divided by `taylor_tokens` (the loss tokens) on read. `tokens` = tokens
    each MoE layer saw.
    """

    layers: list[int]
    tokens: int
    top_k: int
    counts: torch.Tensor
    gate_sum: torch.Tensor
    reap_sum: torch.Tensor
    man_sum: torch.Tensor
    max_abs: torch.Tensor
    taylor_sum: torch.Tensor | None = None
    taylor_per_batch_sum: torch.Tensor | None = None
    taylor_tokens: int = 0

    @property
    def frequency(self) -> torch.Tensor:
        """|X_e| / tokens; each row sums to top_k."""
        return M.safe_divide(num=self.counts, den=torch.tensor(float(self.tokens)))

    @property
    def weighted_frequency(self) -> torch.Tensor:
        """sum_{x in X_e} g_e(x) / tokens: the router mass expert e receives per token."""
        return M.safe_divide(num=self.gate_sum, den=torch.tensor(float(self.tokens)))

    @property
    def reap(self) -> torch.Tensor:
        """REAP S_e = mean_{x in X_e} g_e(x) * ||f_e(x)||_2 (0 for unused experts)."""
        return M.safe_divide(num=self.reap_sum, den=self.counts)

    @property
    def man(self) -> torch.Tensor:
        """MAN = mean_{x in X_e} ||f_e(x)||_2 (0 for unused experts)."""
        return M.safe_divide(num=self.man_sum, den=self.counts)

    @property
    def ean_sum(self) -> torch.Tensor:
        """REAP's EAN criterion `ean_sum` = sum_{x in X_e} ||f_e(x)||_2 (CerebrasResearch/reap
        `pruning_metrics.py`): MAN times |X_e|, so an expert that is routed more scores higher. Not divided by
        anything, as in REAP; it ranks experts within a layer."""
        return self.man_sum.to(torch.float64).clone()

    @property
    def taylor(self) -> torch.Tensor | None:
        """T_e = (1/N) sum_{w in expert e} |w * sum_b dL_b/dw|, L_b the summed next-token loss of batch b and N the
        loss tokens: the gradient of the mean loss over all calibration batches, as in LLM-Pruner (`hf_prune.py`:
        one backward of the loss over all examples; `LLMPruner/pruner/hf_llama_pruner.py`: `salience = W * W.grad`,
        `param_first`: |salience| summed)."""
        return _per_token(self.taylor_sum, self.taylor_tokens)

    @property
    def taylor_per_batch(self) -> torch.Tensor | None:
        """(1/N) sum_b sum_{w in expert e} |w * dL_b/dw|: |w * grad| per batch, summed over batches (>= `taylor`;
        equal with one batch). The studio's rule before scores version 2."""
        return _per_token(self.taylor_per_batch_sum, self.taylor_tokens)

    def score(self, name: str) -> torch.Tensor:
        """The [L, E] score called `name`, an entry of `compressor.methods.EXPERT_SCORES`."""
        value = method(EXPERT_SCORES, name).load()(self)
        if value is None:
            raise ValueError("no Taylor scores in this report: analyze with taylor=True (CLI: --taylor)")
        return value


@dataclass
class NeuronScores:
    """Per MoE layer x expert x neuron, [L, E, I] float64.

    abs_sum = sum_{x in X_e} |h_e(x)_i|, down_norm = ||Wd_e[:, i]||_2 at collection time, counts [L, E] = |X_e|;
    taylor_sum / taylor_per_batch_sum as for experts, restricted to the neuron's gate row, up row and down column
    (and its gate / up bias)."""

    layers: list[int]
    counts: torch.Tensor
    abs_sum: torch.Tensor
    down_norm: torch.Tensor
    taylor_sum: torch.Tensor | None = None
    taylor_per_batch_sum: torch.Tensor | None = None
    taylor_tokens: int = 0

    @property
    def mean_abs(self) -> torch.Tensor:
        """mean_{x in X_e} |h_e(x)_i|."""
        return M.safe_divide(num=self.abs_sum, den=self.counts[..., None])

    @property
    def activation(self) -> torch.Tensor:
        """a_{e,i} = mean_{x in X_e} |h_e(x)_i| * ||Wd_e[:, i]||_2."""
        return torch.stack([M.neuron_activation_scores(abs_sum=a, counts=c, down_norm=d)
                            for a, c, d in zip(self.abs_sum, self.counts, self.down_norm)])

    @property
    def taylor(self) -> torch.Tensor | None:
        """T_{e,i} = (1/N) sum over the neuron's weights w of |w * sum_b dL_b/dw|: LLM-Pruner's rule and the default
        neuron score (`hf_prune.py` takes one backward of the loss over all examples; `hf_llama_pruner.py`:
        `salience = W * W.grad`, `param_first`: |salience| summed over the neuron's rows / columns)."""
        return _per_token(self.taylor_sum, self.taylor_tokens)

    @property
    def taylor_per_batch(self) -> torch.Tensor | None:
        """(1/N) sum_b sum over the neuron's weights w of |w * dL_b/dw| (|w * grad| per batch, then summed)."""
        return _per_token(self.taylor_per_batch_sum, self.taylor_tokens)

    def score(self, name: str) -> torch.Tensor:
        """The [L, E, I] score called `name`, an entry of `compressor.methods.NEURON_SCORES`."""
        value = method(NEURON_SCORES, name).load()(self)
        if value is None:
            raise ValueError("no Taylor scores in this report: analyze with taylor=True (CLI: --taylor)")
        return value


@dataclass
class LayerScores:
    """Per decoder layer (all of them), [N] float64.

    cos_sum = sum_t cos(h_in_t, h_out_t), tokens = tokens seen; dlp = median Wanda score A over the layer's linear
    maps (experts included; DLP's layer score, see `compressor.importance.wanda_stats.layer_statistics`); owl = share of
    A entries above outlier_m * mean(A). `wanda_inputs` maps each scored linear map to sum_t x_t^2 per input feature
    (Wanda's ||X_j||^2): nn.Linear modules by their module name ([in]), and for each MoE block
    '<block>.experts.gate_up' ([E, H], tokens routed to e) and '<block>.experts.down' ([E, I], the intermediate h of
    those tokens)."""

    layers: list[int]
    cos_sum: torch.Tensor
    tokens: torch.Tensor
    dlp: torch.Tensor | None = None
    owl: torch.Tensor | None = None
    outlier_m: float = 5.0
    wanda_inputs: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def block_influence(self) -> torch.Tensor:
        """BI_l = 1 - mean_t cos(h_in_t, h_out_t)."""
        return M.block_influence(cos_sum=self.cos_sum, tokens=self.tokens)

    def wanda_input_norm(self, name: str) -> torch.Tensor:
        """||X_j||_2 per input feature of map `name` (see `wanda_inputs` for the names)."""
        if name not in self.wanda_inputs:
            raise KeyError(f"no Wanda input statistics for {name!r}; known maps start with "
                           f"{sorted(self.wanda_inputs)[:3]}")
        return self.wanda_inputs[name].clamp_min(0).sqrt()


@dataclass
class ImportanceReport:
    """Everything one calibration pass measured. `meta` holds family, layer ids, tokens, settings, throughput."""

    family: str
    experts: ExpertScores | None
    neurons: NeuronScores | None
    layers: LayerScores | None
    meta: dict = field(default_factory=dict)

    # -- tables -----------------------------------------------------------------------------------------------
    def to_frames(self) -> dict[str, pd.DataFrame]:
        """Long-format tables: experts (layer, expert, metrics), neurons (layer, expert, neuron, metrics),
        layers (layer, moe, metrics). Missing score kinds give no table."""
        frames = {}
        if self.experts is not None:
            ex = self.experts
            L, E = ex.counts.shape
            cols = {"layer": np.repeat(ex.layers, E), "expert": np.tile(np.arange(E), L),
                    "tokens": ex.counts.reshape(-1).long().numpy(), "frequency": _flat(ex.frequency),
                    "weighted_frequency": _flat(ex.weighted_frequency), "reap": _flat(ex.reap),
                    "man": _flat(ex.man), "ean_sum": _flat(ex.ean_sum), "max_abs_output": _flat(ex.max_abs)}
            if ex.taylor is not None:
                cols["taylor"] = _flat(ex.taylor)
            if ex.taylor_per_batch is not None:
                cols["taylor_per_batch"] = _flat(ex.taylor_per_batch)
            frames["experts"] = pd.DataFrame(cols)
        if self.neurons is not None:
            nr = self.neurons
            L, E, I = nr.abs_sum.shape
            cols = {"layer": np.repeat(nr.layers, E * I), "expert": np.tile(np.repeat(np.arange(E), I), L),
                    "neuron": np.tile(np.arange(I), L * E), "activation": _flat(nr.activation),
                    "mean_abs": _flat(nr.mean_abs), "down_norm": _flat(nr.down_norm)}
            if nr.taylor is not None:
                cols["taylor"] = _flat(nr.taylor)
            if nr.taylor_per_batch is not None:
                cols["taylor_per_batch"] = _flat(nr.taylor_per_batch)
            frames["neurons"] = pd.DataFrame(cols)
        if self.layers is not None:
            ly = self.layers
            moe = set(self.experts.layers if self.experts is not None else self.meta.get("moe_layers", []))
            cols = {"layer": list(ly.layers), "moe": [i in moe for i in ly.layers],
                    "block_influence": _flat(ly.block_influence)}
            if ly.dlp is not None:
                cols["dlp_score"] = _flat(ly.dlp)
                cols["owl_outlier_ratio"] = _flat(ly.owl)
            frames["layers"] = pd.DataFrame(cols)
        return frames

    # -- persistence --------------------------------------------------------------------------------------------
    def save(self, directory: str | Path, *, table_format: str = "csv") -> Path:
        """Write <table>.csv|parquet per table, summary.json and scores.safetensors (exact tensors) into `directory`."""
        if table_format not in TABLE_FORMATS:
            raise ValueError(f"table format {table_format!r} is not one of {TABLE_FORMATS}")
        if table_format == "parquet":
            _require_parquet()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tables = {}
        for name, df in self.to_frames().items():
            path = out / f"{name}.{table_format}"
            df.to_csv(path, index=False) if table_format == "csv" else df.to_parquet(path, index=False)
            tables[name] = path.name
        tensors, structure = self._pack()
        save_file(tensors, str(out / TENSOR_FILE))
        summary = {"version": SCORES_VERSION, "family": self.family, "meta": self.meta, "structure": structure,
                   "tables": tables, "tensors": TENSOR_FILE, **_highlights(self)}
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str, allow_nan=True))
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "ImportanceReport":
        """Read a report written by `save` (from summary.json + scores.safetensors; the tables are not needed)."""
        d = Path(directory)
        if not (d / SUMMARY_FILE).is_file() or not (d / TENSOR_FILE).is_file():
            raise FileNotFoundError(f"{d}: no {SUMMARY_FILE} + {TENSOR_FILE}; point at a folder written by "
                                    "`python -m compressor analyze` or ImportanceReport.save")
        summary = json.loads((d / SUMMARY_FILE).read_text())
        if summary.get("version") != SCORES_VERSION:
            raise ValueError(f"{d}: scores version {summary.get('version')} cannot be read by this studio "
                             f"(version {SCORES_VERSION}); analyze the model again")
        return cls._unpack(summary["family"], summary["meta"], summary["structure"], load_file(str(d / TENSOR_FILE)))

    def _pack(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, structure = {}, {}
        for part in ("experts", "neurons", "layers"):
            obj = getattr(self, part)
            if obj is None:
                continue
            info = {}
            for f in fields(obj):
                value = getattr(obj, f.name)
                if isinstance(value, torch.Tensor):
                    tensors[f"{part}.{f.name}"] = value.detach().cpu().contiguous()
                elif isinstance(value, dict):
                    info[f.name] = sorted(value)
                    for k, t in value.items():
                        tensors[f"{part}.{f.name}.{k}"] = t.detach().cpu().contiguous()
                elif value is not None:
                    info[f.name] = value
            structure[part] = info
        return tensors, structure

    @classmethod
    def _unpack(cls, family: str, meta: dict, structure: dict, tensors: dict) -> "ImportanceReport":
        parts = {}
        for part, klass in (("experts", ExpertScores), ("neurons", NeuronScores), ("layers", LayerScores)):
            if part not in structure:
                parts[part] = None
                continue
            info, kw = structure[part], {}
            for f in fields(klass):
                key = f"{part}.{f.name}"
                if key in tensors:
                    kw[f.name] = tensors[key]
                elif f.name == "wanda_inputs":
                    kw[f.name] = {k: tensors[f"{key}.{k}"] for k in info.get(f.name, [])}
                elif f.name in info:
                    kw[f.name] = info[f.name]
            parts[part] = klass(**kw)
        return cls(family=family, meta=meta, **parts)


def _per_token(value: torch.Tensor | None, tokens: int) -> torch.Tensor | None:
    """A Taylor sum divided by the loss tokens it was taken over (None stays None)."""
    if value is None:
        return None
    return M.safe_divide(num=value, den=torch.tensor(float(tokens)))


def _flat(t: torch.Tensor) -> np.ndarray:
    return t.detach().reshape(-1).cpu().numpy()


def _highlights(report: ImportanceReport) -> dict:
    """Small per-layer digest for summary.json: experts ranked by REAP, layers ranked by block influence."""
    out = {}
    if report.experts is not None:
        ex = report.experts
        out["experts_by_reap"] = {str(l): row.argsort(descending=True, stable=True).tolist()
                                  for l, row in zip(ex.layers, ex.reap)}
        out["frequency_range"] = {str(l): [float(row.min()), float(row.max())]
                                  for l, row in zip(ex.layers, ex.frequency)}
    if report.layers is not None:
        bi = report.layers.block_influence
        out["block_influence"] = {str(l): float(v) for l, v in zip(report.layers.layers, bi)}
        out["layers_by_block_influence"] = [report.layers.layers[i] for i in bi.argsort(stable=True).tolist()]
    return out


def _require_parquet() -> None:
    try:
        import pyarrow  # noqa: F401
    except ModuleNotFoundError:
        raise ValueError("parquet tables need the `pyarrow` package (pip install pyarrow); "
                         "or write CSV tables (table_format='csv', CLI --format csv)") from None

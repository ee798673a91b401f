"""Versioned configs of the slimming operations: small frozen dataclasses, validated on construction, JSON round-trip.

    cfg = NeuronSlimConfig(keep_ratio=0.5)
    assert NeuronSlimConfig.from_dict(cfg.to_dict()) == cfg
    SparsifyConfig(sparsity=0.5, allocation="dlp")          # median Wanda score per layer, alpha = 0.15
    SparsifyConfig(sparsity=0.5, calibration="dense")       # every layer's norms from one pass of the dense model
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from compressor.methods import EXPERT_MERGES, SPARSITY_ALLOCATIONS, names

SLIMMING_CONFIG_VERSION = 1
ALLOCATIONS = names(SPARSITY_ALLOCATIONS)        # the registry: compressor/methods.py
DLP_STATISTICS = ("median", "mean")       # DLP's layer score: the paper / --strategy default, the unstructured path's
CALIBRATIONS = ("sequential", "dense")    # where layer l's Wanda norms come from: the model pruned below l, or dense


class _Config:
    """to_dict / from_dict shared by every config; from_dict refuses unknown fields and other versions."""

    kind: ClassVar[str] = ""

    def to_dict(self) -> dict:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict):
        data = dict(data)
        kind = data.pop("kind", cls.kind)
        if kind != cls.kind:
            raise ValueError(f"{cls.__name__}: got a config of kind {kind!r}, expected {cls.kind!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(names)}")
        return cls(**data)

    def _check_version(self):
        if self.version != SLIMMING_CONFIG_VERSION:
            raise ValueError(f"{type(self).__name__} version {self.version} is not supported; this studio reads "
                             f"version {SLIMMING_CONFIG_VERSION}")


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class NeuronSlimConfig(_Config):
    """Keep `keep_ratio` of the intermediate neurons of every routed expert (one width for the whole model)."""

    kind: ClassVar[str] = "slim_neurons"
    keep_ratio: float = 1.0
    version: int = SLIMMING_CONFIG_VERSION

    def __post_init__(self):
        self._check_version()
        if not (isinstance(self.keep_ratio, (int, float)) and 0.0 < self.keep_ratio <= 1.0):
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio!r}")

    def target_width(self, width: int) -> int:
        """round(keep_ratio * width), at least 1."""
        return max(1, min(width, int(math.floor(self.keep_ratio * width + 0.5))))


@dataclass(frozen=True)
class ExpertPruneConfig(_Config):
    """Keep `experts_keep` routed experts in every MoE layer (the highest-scoring ones)."""

    kind: ClassVar[str] = "prune_experts"
    experts_keep: int = 1
    version: int = SLIMMING_CONFIG_VERSION

    def __post_init__(self):
        self._check_version()
        _check_positive_int("experts_keep", self.experts_keep)


MERGE_METHODS = names(EXPERT_MERGES)        # the registry: compressor/methods.py


@dataclass(frozen=True)
class ExpertMergeConfig(_Config):
    """Merge the routed experts of every MoE layer into `experts_keep` (`compressor.slimming.merge`): `method` groups
    them (REAM, HC-SMoE, M-SMoE), each group folds into one expert that keeps its centroid's router row.
    `group_size` is REAM's C (at most C experts per group); `samples` calibration tokens give the activations that
    align neurons and the router probabilities of the similarity."""

    kind: ClassVar[str] = "merge_experts"
    experts_keep: int = 1
    method: str = "ream"
    group_size: int = 16
    samples: int = 512
    version: int = SLIMMING_CONFIG_VERSION

    def __post_init__(self):
        self._check_version()
        _check_positive_int("experts_keep", self.experts_keep)
        if self.method not in MERGE_METHODS:
            raise ValueError(f"unknown expert merge {self.method!r}; choose one of {', '.join(MERGE_METHODS)}")
        _check_positive_int("group_size", self.group_size)
        if not isinstance(self.samples, int) or self.samples < 8:
            raise ValueError(f"samples must be an integer >= 8, got {self.samples!r}")


@dataclass(frozen=True)
class LayerDropConfig(_Config):
    """Remove the `layers_drop` decoder layers with the lowest score (block influence)."""

    kind: ClassVar[str] = "drop_layers"
    layers_drop: int = 0
    version: int = SLIMMING_CONFIG_VERSION

    def __post_init__(self):
        self._check_version()
        if not isinstance(self.layers_drop, int) or isinstance(self.layers_drop, bool) or self.layers_drop < 0:
            raise ValueError(f"layers_drop must be a non-negative integer, got {self.layers_drop!r}")


@dataclass(frozen=True)
class SparsifyConfig(_Config):
    """Unstructured Wanda sparsity `sparsity` on average, spread over decoder layers by `allocation`.

    owl: outlier threshold `owl_m` x mean, spread `owl_lambda`; dlp: layer score `dlp_statistic` (median, as in the
    DLP paper and its repository's `--strategy` default, or mean, what the repository's unstructured path uses),
    spread `dlp_alpha` (docs/methods.md). OWL is the default until DLP wins on the studio's own benchmark
    (bench/quality.py).

    calibration: "sequential" (the default, as Wanda, OWL and DLP do it) prunes layer by layer and measures layer l's
    input norms on the model already pruned in layers < l; the OWL / DLP layer ratios still come from one pass over
    the dense model, as in the references (`compressor.slimming.sequential`). "dense" takes every layer's norms from
    that one dense pass."""

    kind: ClassVar[str] = "sparsify"
    sparsity: float = 0.5
    allocation: str = "owl"
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    dlp_alpha: float = 0.15
    dlp_statistic: str = "median"
    calibration: str = "sequential"
    version: int = SLIMMING_CONFIG_VERSION

    def __post_init__(self):
        self._check_version()
        if not (isinstance(self.sparsity, (int, float)) and 0.0 <= self.sparsity < 1.0):
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if self.dlp_statistic not in DLP_STATISTICS:
            raise ValueError(f"dlp_statistic must be one of {DLP_STATISTICS}, got {self.dlp_statistic!r}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if self.owl_m <= 0:
            raise ValueError(f"owl_m must be positive, got {self.owl_m!r}")
        for name in ("owl_lambda", "dlp_alpha"):
            v = getattr(self, name)
            if not 0.0 <= v < 0.5:
                raise ValueError(f"{name} must be in [0, 0.5), got {v!r}")

    @property
    def needs_dense_norms(self) -> bool:
        """Whether `sparsify_` reads Wanda norms of the dense model: for every layer ("dense"), or for the OWL / DLP
        layer statistics; sequential uniform sparsity measures every norm on the pruned model and needs none."""
        return self.calibration == "dense" or self.allocation != "uniform"


CONFIG_TYPES = {c.kind: c for c in (NeuronSlimConfig, ExpertPruneConfig, ExpertMergeConfig, LayerDropConfig,
                                     SparsifyConfig)}


def config_from_dict(data: dict):
    """Rebuild any slimming config from its `to_dict()` (dispatch on `kind`)."""
    kind = data.get("kind")
    if kind not in CONFIG_TYPES:
        raise ValueError(f"unknown slimming config kind {kind!r}; known: {sorted(CONFIG_TYPES)}")
    return CONFIG_TYPES[kind].from_dict(data)

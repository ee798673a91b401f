"""What each slimming operation did: parameters before/after (total and active per token), what was kept per layer,
the time taken. Every report turns into JSON with `to_dict()`.

    report = slim_neurons_(model, scores, NeuronSlimConfig(keep_ratio=0.5))
    report.params_after.total, report.width, report.to_dict()["layers"][0]
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from compressor.inspect import ParamCount


@dataclass
class _Report:
    params_before: ParamCount
    params_after: ParamCount
    seconds: float

    def _base(self) -> dict:
        b, a = self.params_before, self.params_after
        return {
            "operation": self.config.kind,                                # type: ignore[attr-defined]
            "config": self.config.to_dict(),                              # type: ignore[attr-defined]
            "params_before": b.to_dict(),
            "params_after": a.to_dict(),
            "params_total_ratio": a.total / b.total if b.total else 1.0,
            "params_active_ratio": a.active / b.active if b.active else 1.0,
            "seconds": self.seconds,
        }


@dataclass
class NeuronSlimReport(_Report):
    config: object
    width_before: int
    width_requested: int              # round(keep_ratio * width_before)
    width: int                        # width actually used (a width-coupled shared expert may force a smaller one)
    kept: dict[int, torch.Tensor] = field(default_factory=dict)        # layer -> kept neuron ids [E, width]
    score_kept: dict[int, float] = field(default_factory=dict)         # layer -> share of the score mass kept

    def to_dict(self, *, with_ids: bool = False) -> dict:
        layers = []
        for layer, ids in self.kept.items():
            row = {"layer": layer, "experts": int(ids.shape[0]), "width_before": self.width_before,
                   "width": int(ids.shape[1]), "score_kept": self.score_kept.get(layer)}
            if with_ids:
                row["kept"] = ids.tolist()
            layers.append(row)
        return {**self._base(), "width_before": self.width_before, "width_requested": self.width_requested,
                "width": self.width, "layers": layers}


@dataclass
class ExpertPruneReport(_Report):
    config: object
    experts_before: int
    experts_after: int
    groups: int                                                        # DeepSeek-style routing groups (1 = none)
    kept: dict[int, list[int]] = field(default_factory=dict)           # layer -> kept expert ids (original numbering)
    dropped: dict[int, list[int]] = field(default_factory=dict)
    score_kept: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        layers = [{"layer": layer, "kept": ids, "dropped": self.dropped[layer], "score_kept": self.score_kept.get(layer)}
                  for layer, ids in self.kept.items()]
        return {**self._base(), "experts_before": self.experts_before, "experts_after": self.experts_after,
                "groups": self.groups, "layers": layers}


@dataclass
class LayerDropReport(_Report):
    config: object
    layers_before: int
    layers_after: int
    dropped: list[int] = field(default_factory=list)                  # original indices, ascending
    kept: list[int] = field(default_factory=list)                     # original index of each new layer
    scores: list[float] = field(default_factory=list)                 # the layer scores used, original numbering

    def to_dict(self) -> dict:
        return {**self._base(), "layers_before": self.layers_before, "layers_after": self.layers_after,
                "dropped": self.dropped, "kept": self.kept, "scores": self.scores}


@dataclass
class LayerSparsity:
    layer: int
    target: float           # sparsity the allocation asked for
    achieved: float         # zeros / weights over the layer's sparsified maps, after pruning
    weights: int            # weights in the layer's sparsified maps
    stat: float             # allocation statistic: OWL outlier share D_l, DLP layer score s_l (median or mean
                            # Wanda score, `dlp_statistic`), or 0 for uniform


@dataclass
class SparsifyReport(_Report):
    config: object
    layers: list[LayerSparsity] = field(default_factory=list)
    achieved: float = 0.0            # zeros / weights over every sparsified map
    maps: int = 0                    # linear maps (expert slices counted one per expert and projection)

    def to_dict(self) -> dict:
        return {**self._base(), "achieved": self.achieved, "maps": self.maps,
                "layers": [vars(s).copy() for s in self.layers]}


@dataclass
class ExpertMergeReport(_Report):
    config: object
    experts_before: int
    experts_after: int
    groups: dict[int, list[list[int]]] = field(default_factory=dict)     # layer (original index) -> groups,
    #                                                                     centroid first (original expert ids)
    similarity: dict[int, list[float]] = field(default_factory=dict)    # layer -> mean similarity inside each group
    weights: dict[int, list[list[float]]] = field(default_factory=dict)  # layer -> fold weights, as `groups`

    def renumber_(self, source: list[int]) -> None:
        """Key the layers by their index before a layer drop (`source[j]`: the original index of layer j)."""
        for table in (self.groups, self.similarity, self.weights):
            moved = {source[j]: v for j, v in table.items()}
            table.clear()
            table.update(moved)

    def merged_into(self, layer: int) -> dict[int, int]:
        """{old expert id: new expert id} of one layer (new ids follow the centroids' order)."""
        out = {}
        for new, group in enumerate(sorted(self.groups[layer], key=lambda g: g[0])):
            out.update({old: new for old in group})
        return out

    def to_dict(self) -> dict:
        layers = [{"layer": layer, "groups": groups, "similarity": self.similarity.get(layer),
                   "weights": self.weights.get(layer)} for layer, groups in self.groups.items()]
        return {**self._base(), "experts_before": self.experts_before, "experts_after": self.experts_after,
                "method": self.config.method, "layers": layers}                  # type: ignore[attr-defined]

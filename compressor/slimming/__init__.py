"""Slimming: cut a MoE model in place and save it so stock transformers loads it.

One verb per operation, `(model, scores, config) -> report`, trailing `_` because the model changes in place:
    slim_neurons_(model, neuron_scores: {layer: [E, I]}, NeuronSlimConfig)   keep the top neurons of every expert
    prune_experts_(model, expert_scores: {layer: [E]}, ExpertPruneConfig)    keep the top experts of every layer
    merge_experts_(model, batches, ExpertMergeConfig)                        fold every layer's experts into fewer
                                                                             (REAM / HC-SMoE / M-SMoE), sequentially
    drop_layers_(model, layer_scores: [L], LayerDropConfig)                  drop the lowest-influence layers
    sparsify_(model, wanda_inputs: {key: norms}, SparsifyConfig, batches=)   unstructured Wanda, uniform/OWL/DLP,
                                                                             calibrated layer by layer (sequential)
Scores are keyed by the current model's decoder-layer index, so apply the structural cuts in this order when
combining them: neurons, experts, (collect Wanda inputs, sparsify), layers last.

    report = slim_neurons_(model, scores, NeuronSlimConfig(keep_ratio=0.5))
    save_checkpoint(model, tokenizer, "out/checkpoint", extra_card=report.to_dict())
"""
from compressor.slimming.config import (ExpertMergeConfig, ExpertPruneConfig, LayerDropConfig, NeuronSlimConfig,
                                        SparsifyConfig, config_from_dict)
from compressor.slimming.experts import prune_experts_, select_experts
from compressor.slimming.export import ReloadMismatchError, save_checkpoint, verify_reload
from compressor.slimming.layers import drop_layers_, lowest_layers
from compressor.slimming.neurons import slim_neurons_, top_neurons
from compressor.slimming.merge import merge_experts_
from compressor.slimming.report import (ExpertMergeReport, ExpertPruneReport, LayerDropReport, LayerSparsity, NeuronSlimReport,
                                        SparsifyReport)
from compressor.slimming.sparsify import sparsifiable_maps, sparsify_
from compressor.slimming.structure import StructureMismatchError, check_structure
from compressor.importance.wanda_stats import wanda_inputs_from_sums
from compressor.slimming.wanda_inputs import collect_wanda_inputs

__all__ = [
    "ExpertMergeConfig", "ExpertMergeReport", "ExpertPruneConfig", "ExpertPruneReport", "LayerDropConfig", "LayerDropReport", "LayerSparsity",
    "NeuronSlimConfig", "NeuronSlimReport", "ReloadMismatchError", "SparsifyConfig", "SparsifyReport",
    "StructureMismatchError", "check_structure", "collect_wanda_inputs", "config_from_dict", "drop_layers_",
    "lowest_layers", "merge_experts_", "prune_experts_", "save_checkpoint", "select_experts", "slim_neurons_", "sparsifiable_maps",
    "sparsify_", "top_neurons", "verify_reload", "wanda_inputs_from_sums",
]

"""Importance scores for experts, neurons and layers from one calibration pass (see docs/ARCHITECTURE.md).

    from compressor.importance import AnalyzeConfig, analyze, load_or_analyze
    report = load_or_analyze(model, batches, config=AnalyzeConfig(taylor=False))
    keep = report.experts.reap.argsort(dim=1, descending=True)[:, :6]     # top-6 experts per MoE layer
"""
from compressor.importance.analyze import AnalyzeConfig, analyze, next_token_loss_sum
from compressor.importance.cache import cache_key, data_fingerprint, load_or_analyze, scores_cache_dir
from compressor.importance.collect import WANT_ALL, ScoreCollector, collect_scores, wanda_targets
from compressor.importance.scores import (EXPERT_SCORE_NAMES, NEURON_SCORE_NAMES, SCORES_VERSION, ExpertScores,
                                          ImportanceReport, LayerScores, NeuronScores)

__all__ = ["AnalyzeConfig", "analyze", "next_token_loss_sum", "cache_key", "data_fingerprint", "load_or_analyze",
           "scores_cache_dir", "WANT_ALL", "ScoreCollector", "collect_scores", "wanda_targets", "SCORES_VERSION",
           "EXPERT_SCORE_NAMES", "NEURON_SCORE_NAMES", "ExpertScores", "ImportanceReport", "LayerScores",
           "NeuronScores"]

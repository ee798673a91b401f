"""The layer-by-layer engine: score, slim and evaluate checkpoints larger than memory, one decoder layer at a time.

A checkpoint is opened as a *skeleton* (every parameter on the meta device, buffers real) plus an index of its
safetensors shards. A sweep captures what the first decoder layer receives, then for each layer in turn loads only
that layer's tensors, runs the calibration activations through it, and frees it; activations between layers stay
on the CPU. The same scoring hooks, cut primitives and selection rules as the in-memory path run on each layer, so
both paths give the same scores and bitwise-identical tensors.

    report = stream_analyze("big-model/", batches, config=AnalyzeConfig(taylor=False))
    result = stream_slim("big-model/", report, SlimmingConfig(expert_keep_ratio=0.5), out_dir="slim/")
    ppl = stream_perplexity("slim/", windows)
"""

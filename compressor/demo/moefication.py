"""MoEfication of a dense Llama-architecture model into a stock Mixtral MoE: the tensor math.

MoEfication (Zhang et al. 2022) and LLaMA-MoE (Zhu et al. 2024): a SwiGLU MLP
    mlp(x) = W_down (silu(W_gate x) * (W_up x)) = sum_i a_i(x) W_down[:, i],   a_i = silu(g_i . x) * (u_i . x)
is a sum over its I intermediate neurons, so splitting the neurons into E groups of I / E gives E experts whose
outputs add up to the MLP exactly. Neurons that fire together go to the same group (balanced k-means on their
|activation| profiles over calibration tokens), and a router predicts, per token, the k groups with the largest
sum of |a_i| (MoEfication's target); only those k experts run.

A few neurons carry most of the MLP's output on some tokens (massive activations: dropping them for one token
wrecks the rest of the sequence), so `shared_neurons` picks S neurons by their RMS output contribution
sqrt(mean_t (|a_i(t)| * ||W_down[:, i]||)^2) and copies them into every expert; with k experts chosen and weights
1 / k each, the copies add up to the neuron once (their down columns carry no factor k, see below). The other
I - S neurons are clustered into the E groups.

The result is a `MixtralForCausalLM`: Llama attention (q/k/v/o without bias, RMSNorm, RoPE) is Mixtral's
attention, so attention, norms and embeddings are copied unchanged. Mixtral weights each chosen expert by its
renormalised softmax probability w_e (sum over the k chosen = 1), where MoEfication adds the chosen experts
unweighted; each expert's down projection is therefore multiplied by k, so that equal weights (w_e = 1 / k)
give MoEfication's sum exactly. `router_scale` multiplies the trained router: the choice of experts (the top-k
order of the logits) does not depend on it; small values make the weights nearly equal.

    labels = balanced_clusters(acts.abs().T, groups=8)            # [I] group of each neuron, I / 8 per group
    perm = group_permutation(labels, groups=8)                    # [I] neurons ordered group by group
    w, losses = train_router(x, group_scores(acts, labels, groups=8), top_k=2)
    moe = moefy(dense, perms=[perm] * L, routers=[w] * L, top_k=2)    # MixtralForCausalLM
    shared = shared_neurons(acts, down=W_down, count=64)          # [64] neurons copied into every expert
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mlp_activations(x: torch.Tensor, *, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """a = silu(x W_gate^T) * (x W_up^T): x [T, H], gate / up [I, H] -> [T, I]."""
    return F.silu(x @ gate.T) * (x @ up.T)


def balanced_clusters(features: torch.Tensor, *, groups: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """Balanced spherical k-means: [N, D] rows -> LongTensor [N] of labels, exactly N / groups rows per label.

    Rows are L2-normalised (cosine similarity of activation profiles = co-activation). Each round assigns
    greedily: (row, centroid) pairs in decreasing similarity, a pair taken when the row is free and the centroid
    holds fewer than N / groups rows; centroids are the normalised means. Stops when labels repeat.

        balanced_clusters(torch.randn(12, 5), groups=3).bincount()   # tensor([4, 4, 4])
    """
    n = features.shape[0]
    if groups < 1 or n % groups:
        raise ValueError(f"{n} neurons cannot be split into {groups} equal groups; pick a divisor of {n}")
    x = F.normalize(features.double(), dim=1)
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(n, generator=gen)[:groups]]
    labels = None
    for _ in range(iters):
        new = _balanced_assign(x @ centroids.T, n // groups)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        centroids = F.normalize(torch.stack([x[labels == e].mean(0) for e in range(groups)]), dim=1)
    return labels


def _balanced_assign(sim: torch.Tensor, capacity: int) -> torch.Tensor:
    """Greedy capacity-limited assignment of rows to columns by decreasing `sim` [N, E]."""
    n, e = sim.shape
    labels = torch.full((n,), -1, dtype=torch.long)
    room = [capacity] * e
    left = n
    for flat in sim.flatten().argsort(descending=True).tolist():
        row, col = divmod(flat, e)
        if labels[row] < 0 and room[col] > 0:
            labels[row] = col
            room[col] -= 1
            left -= 1
            if not left:
                break
    return labels


def shared_neurons(acts: torch.Tensor, *, down: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` neurons of largest RMS output contribution sqrt(mean_t (|a_i(t)| ||W_down[:, i]||)^2):
    acts [T, I], down [H, I] -> LongTensor [count], ascending."""
    if count == 0:
        return torch.zeros(0, dtype=torch.long)
    score = acts.double().pow(2).mean(0).sqrt() * down.double().norm(dim=0)     # [I]
    return score.topk(count).indices.sort().values


def routed_neurons(width: int, shared: torch.Tensor) -> torch.Tensor:
    """The neuron indices 0..width-1 not in `shared`, ascending."""
    keep = torch.ones(width, dtype=torch.bool)
    keep[shared] = False
    return torch.nonzero(keep).flatten()


def group_permutation(labels: torch.Tensor, *, groups: int) -> torch.Tensor:
    """Neuron indices ordered group 0 first, then 1, ... (ascending within a group): LongTensor [I].
    Expert e holds neurons perm[e * I/E : (e+1) * I/E]."""
    counts = torch.bincount(labels, minlength=groups)
    if not bool((counts == counts[0]).all()):
        raise ValueError(f"groups are unequal ({counts.tolist()}); experts need the same width")
    return torch.cat([torch.nonzero(labels == e).flatten() for e in range(groups)])


def group_scores(acts: torch.Tensor, labels: torch.Tensor, *, groups: int) -> torch.Tensor:
    """s[t, e] = sum over neurons i of group e of |a_i(t)|: acts [T, I] -> [T, E] (MoEfication's router target)."""
    out = torch.zeros(acts.shape[0], groups, dtype=acts.dtype)
    return out.index_add_(1, labels, acts.abs())


def topk_targets(scores: torch.Tensor, *, top_k: int) -> torch.Tensor:
    """Multi-hot [T, E] of the top_k groups per token."""
    return torch.zeros_like(scores).scatter_(1, scores.topk(top_k, dim=1).indices, 1.0)


def train_router(x: torch.Tensor, scores: torch.Tensor, *, top_k: int, steps: int = 300, batch: int = 2048,
                 lr: float = 3e-3, seed: int = 0) -> tuple[torch.Tensor, list[float]]:
    """A bias-free router W [E, H] with binary cross-entropy: logits x W^T against the multi-hot top_k of `scores`.

    Adam on minibatches of `batch` tokens; W starts at zero (every logit 0, loss log 2). Returns (W, loss per step).

        w, losses = train_router(torch.randn(512, 16), torch.rand(512, 4), top_k=1, steps=50)
    """
    target = topk_targets(scores.float(), top_k=top_k)
    x = x.float()
    gen = torch.Generator().manual_seed(seed)
    weight = torch.zeros(scores.shape[1], x.shape[1], requires_grad=True)
    opt = torch.optim.Adam([weight], lr=lr)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (min(batch, x.shape[0]),), generator=gen)
        loss = F.binary_cross_entropy_with_logits(x[idx] @ weight.T, target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return weight.detach(), losses


def router_recall(x: torch.Tensor, weight: torch.Tensor, scores: torch.Tensor, *, top_k: int) -> float:
    """Share of the target top_k groups that the router's top_k picks: mean over tokens of |pick & target| / k."""
    pick = topk_targets((x.float() @ weight.T), top_k=top_k)
    return float((pick * topk_targets(scores.float(), top_k=top_k)).sum(1).mean() / top_k)


def moe_config(dense_config, *, experts: int, top_k: int, shared: int = 0):
    """The MixtralConfig that holds a Llama config's attention unchanged and its MLP as `experts` experts of
    (intermediate_size - shared) / experts routed neurons plus the `shared` ones, top_k of them per token."""
    from transformers import MixtralConfig

    c = dense_config
    if getattr(c, "mlp_bias", False) or getattr(c, "attention_bias", False) or c.hidden_act != "silu":
        raise ValueError("only a Llama without biases and with a SiLU-gated MLP maps onto Mixtral exactly")
    if (c.intermediate_size - shared) % experts or not 1 <= top_k <= experts:
        raise ValueError(f"intermediate_size {c.intermediate_size} - {shared} shared into {experts} experts, "
                         f"top-{top_k}: need a divisor and 1 <= top_k <= experts")
    return MixtralConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size,
        intermediate_size=(c.intermediate_size - shared) // experts + shared,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, hidden_act="silu",
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        rope_parameters=dict(c.rope_parameters), sliding_window=None, attention_dropout=0.0,
        tie_word_embeddings=c.tie_word_embeddings, num_local_experts=experts, num_experts_per_tok=top_k,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
        router_jitter_noise=0.0, output_router_logits=False)


@torch.no_grad()
def moefy(dense, *, perms: list[torch.Tensor], routers: list[torch.Tensor], top_k: int,
          shared: list[torch.Tensor] | None = None, router_scale: float = 1.0):
    """A MixtralForCausalLM equal to `dense` (a LlamaForCausalLM) except that layer l's MLP becomes
    E = len(routers[l]) experts routed by router_scale * routers[l] [E, H], top_k per token: expert e holds the
    routed neurons perms[l][e * g:(e + 1) * g] (g = len(perms[l]) / E; their down columns times top_k) followed by
    the shared neurons shared[l] (down columns as they are). perms[l] and shared[l] together must be a permutation
    of the MLP's neurons. With top_k = E and a zero router it computes `dense` exactly (module doc).
    """
    from transformers import MixtralForCausalLM

    layers = dense.model.layers
    shared = shared if shared is not None else [torch.zeros(0, dtype=torch.long)] * len(layers)
    if not len(perms) == len(routers) == len(shared) == len(layers):
        raise ValueError(f"{len(layers)} layers but {len(perms)} permutations, {len(routers)} routers and "
                         f"{len(shared)} shared sets")
    experts = routers[0].shape[0]
    full = dense.config.intermediate_size
    for p, sh in zip(perms, shared):
        if not torch.equal(torch.cat([p, sh]).sort().values, torch.arange(full)):
            raise ValueError("a layer's routed and shared neurons are not a permutation of its MLP's neurons")
    n_shared = len(shared[0])
    config = moe_config(dense.config, experts=experts, top_k=top_k, shared=n_shared)
    moe = MixtralForCausalLM(config).to(next(dense.parameters()).dtype)
    state = {k: v for k, v in dense.state_dict().items() if ".mlp." not in k}
    missing, unexpected = moe.load_state_dict(state, strict=False)
    if unexpected or any(".mlp." not in k for k in missing if k != "lm_head.weight"):
        raise ValueError(f"dense weights do not map onto Mixtral: unexpected {unexpected[:3]}, missing {missing[:3]}")
    g = (full - n_shared) // experts
    for layer, moe_layer, perm, sh, router in zip(layers, moe.model.layers, perms, shared, routers):
        mlp, block = layer.mlp, moe_layer.mlp

        def per_expert(w_rows: torch.Tensor, w_shared: torch.Tensor) -> torch.Tensor:   # [E, g + S, ...]
            routed = w_rows.reshape(experts, g, *w_rows.shape[1:])
            common = w_shared.unsqueeze(0).expand(experts, *w_shared.shape)
            return torch.cat([routed, common], dim=1)

        gate = per_expert(mlp.gate_proj.weight[perm], mlp.gate_proj.weight[sh])          # [E, g+S, H]
        up = per_expert(mlp.up_proj.weight[perm], mlp.up_proj.weight[sh])                # [E, g+S, H]
        down = per_expert(mlp.down_proj.weight[:, perm].T * top_k, mlp.down_proj.weight[:, sh].T)   # [E, g+S, H]
        block.experts.gate_up_proj.copy_(torch.cat([gate, up], dim=1))                  # [E, 2(g+S), H]
        block.experts.down_proj.copy_(down.transpose(1, 2))                              # [E, H, g+S]
        block.gate.weight.copy_(router * router_scale)
    if config.tie_word_embeddings:
        moe.tie_weights()
    return moe.eval()

"""The Compress tab's controls, one builder per group (experts, layers, schedule, residency, calibration, export),
and the order the tab's events take them in (`ORDER`, the order of `recipe_form.form`'s arguments).

New controls go at the end of `ORDER` wherever they are drawn, so a control's index never moves: ui/open_run.py,
the tests and API callers that pass the controls by position keep working (experts kept is control 2, layers dropped
control 4). The last entry, `kept`, is a State: the fields of a loaded recipe that no control holds (so they are
kept, not reset to the defaults); the API does not list it.
"""
from __future__ import annotations

import gradio as gr

from compressor import methods
from compressor.evaluate.local_tasks import LOCAL_TASKS
from compressor.recipe import Recipe
from ui import recipe_form

DEFAULTS = Recipe()
ORDER = ("keep_ratio", "neuron_score", "experts_keep", "expert_score", "layers_drop", "sparsity", "allocation",
         "stages", "steps", "final_share", "temperature", "loss", "lr", "ce_weight", "calib_tokens", "calib_seq",
         "eval_tokens", "perplexity", "speed", "seed", "lm_eval_tasks", "quantize",
         "expert_merge", "merge_group_size", "streaming", "blockwise_steps", "kept")


def build_controls() -> tuple[dict, dict]:
    """({name: control} in `ORDER`, {name: the groups shown or hidden with the choice they belong to})."""
    controls, groups = {}, {}
    for builder in (_expert_controls, _layer_controls, _schedule_controls, _residency_controls,
                    _calibration_controls, _export_controls):
        made = builder()
        groups.update(made.pop("_groups", {}))
        controls.update(made)
    controls["kept"] = gr.State({})
    return {name: controls[name] for name in ORDER}, groups


def _expert_controls() -> dict:
    """SlimMoE neuron slimming (keep ratio, neuron score) and what happens to the experts not kept: pruned by a
    score, or merged (REAM, HC-SMoE, M-SMoE) into the kept ones."""
    d = DEFAULTS
    with gr.Group():
        gr.Markdown("**Experts** · SlimMoE neuron slimming, expert pruning or merging", padding=True)
        keep_ratio = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="expert keep ratio (share of neurons "
                               "kept in every expert)", elem_id="keep-ratio")
        neuron_score = gr.Radio(list(methods.NEURON_SCORES), value=d.slimming.neuron_score,
                                label="neuron score")
        experts_keep = gr.Slider(1, 8, value=8, step=1, label="experts kept per layer (all = no pruning)")
        expert_merge = gr.Radio(recipe_form.MERGE_CHOICES, value=recipe_form.PRUNE, elem_id="expert-merge",
                                label="the experts not kept are … (merging folds them into the kept ones)")
        expert_score = gr.Dropdown(list(methods.EXPERT_SCORES),
                                   value=d.slimming.expert_score,
                                   label="expert score (which experts to keep when pruning)")
        with gr.Column(visible=False) as merge_group:
            merge_group_size = gr.Number(d.slimming.merge_group_size, precision=0, minimum=1, maximum=4096,
                                         elem_id="merge-group-size",
                                         label="REAM group size C (the most experts folded into one)")
    return dict(keep_ratio=keep_ratio, neuron_score=neuron_score, experts_keep=experts_keep,
                expert_score=expert_score, expert_merge=expert_merge, merge_group_size=merge_group_size,
                _groups={"merge_group": merge_group})


def _layer_controls() -> dict:
    """Layers dropped, unstructured sparsity and its allocation over layers."""
    d = DEFAULTS
    with gr.Group():
        gr.Markdown("**Layers and sparsity**", padding=True)
        layers_drop = gr.Slider(0, 3, value=0, step=1, label="layers dropped (lowest block influence)")
        sparsity = gr.Slider(0.0, 0.9, value=0.0, step=0.05, label="unstructured sparsity (Wanda)")
        allocation = gr.Radio(list(methods.SPARSITY_ALLOCATIONS), value=d.slimming.sparsity_allocation,
                              label="sparsity allocation over layers")
    return dict(layers_drop=layers_drop, sparsity=sparsity, allocation=allocation)


def _schedule_controls() -> dict:
    """Stages, and the distillation: steps, last stage's share, temperature, loss, learning rate, CE weight."""
    d = DEFAULTS
    with gr.Group():
        gr.Markdown("**Schedule and distillation**", padding=True)
        stages = gr.Slider(1, 6, value=d.stages, step=1, label="stages (1 = one-shot)")
        steps = gr.Slider(0, 2000, value=d.distill.steps, step=10, label="distillation steps (all stages)")
        final_share = gr.Slider(0.1, 1.0, value=d.distill.final_stage_share, step=0.05,
                                label="last stage's share of the steps (the earlier stages split the rest)")
        temperature = gr.Slider(0.5, 8.0, value=d.distill.temperature, step=0.5, label="temperature")
        with gr.Row():
            loss = gr.Dropdown(list(methods.DISTILL_LOSSES), value=d.distill.loss, label="loss")
            lr = gr.Number(d.distill.lr, label="learning rate", minimum=1e-7, maximum=1.0)
        ce_weight = gr.Slider(0.0, 2.0, value=d.distill.ce_weight, step=0.1,
                              label="next-token cross-entropy weight")
    return dict(stages=stages, steps=steps, final_share=final_share, temperature=temperature, loss=loss, lr=lr,
                ce_weight=ce_weight)


def _residency_controls() -> dict:
    """Where the model lives while the run works (`execution.streaming`), what `auto` picks for this model and why
    (drawn by the preview), and layer-local recovery (`distill.blockwise_steps`) for layer-by-layer runs."""
    d = DEFAULTS
    with gr.Group():
        gr.Markdown("**Memory** · where the model lives while the run works", padding=True)
        streaming = gr.Radio(recipe_form.RESIDENCY_CHOICES, value=d.execution.streaming, elem_id="residency",
                             label="residency")
        note = gr.HTML("", elem_id="residency-note", padding=True)
        with gr.Column(visible=True) as blockwise_group:
            blockwise_steps = gr.Number(d.distill.blockwise_steps, precision=0, minimum=0, maximum=100_000,
                                        elem_id="blockwise-steps",
                                        label="layer-local recovery steps per MoE layer (layer by layer; "
                                              "0 = none; with auto, more than 0 runs layer by layer)")
    return dict(streaming=streaming, blockwise_steps=blockwise_steps,
                _groups={"blockwise": blockwise_group, "residency_note": note})


def _calibration_controls() -> dict:
    """Calibration tokens and length, evaluation tokens and measures, the seed (in a closed accordion)."""
    d = DEFAULTS
    with gr.Accordion("Calibration, evaluation, seed", open=False):
        with gr.Row():
            calib_tokens = gr.Number(d.calibration.tokens, label="calibration tokens", precision=0)
            calib_seq = gr.Number(d.calibration.seq_len, label="calibration seq_len", precision=0)
        with gr.Row():
            eval_tokens = gr.Number(d.evaluate.tokens, label="evaluation tokens", precision=0)
            perplexity = gr.Checkbox(d.evaluate.perplexity, label="perplexity")
            speed = gr.Checkbox(d.evaluate.speed, label="speed")
        seed = gr.Number(d.seed, label="seed", precision=0)
    return dict(calib_tokens=calib_tokens, calib_seq=calib_seq, eval_tokens=eval_tokens, perplexity=perplexity,
                speed=speed, seed=seed)


def _export_controls() -> dict:
    """lm-eval tasks and the quantization preset of the exported checkpoint."""
    with gr.Group():
        gr.Markdown("**Tasks and export**", padding=True)
        lm_eval_tasks = gr.Dropdown(list(LOCAL_TASKS), value=[], multiselect=True, allow_custom_value=True,
                                    label="lm-eval tasks (shipped offline ones, or any lm-eval name)",
                                    elem_id="lm-eval-tasks")
        quantize = gr.Dropdown(list(recipe_form.QUANTIZE_PRESETS), value="none", elem_id="quantize",
                               label="quantize the checkpoint (weight-only, last stage; GPTQ on the "
                                     "calibration tokens; compressed-tensors, the format vLLM serves)")
    return dict(lm_eval_tasks=lm_eval_tasks, quantize=quantize)

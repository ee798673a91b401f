"""Knowledge distillation from the original model into a slimmed student, and the multi-stage schedule.

    from compressor.distill import distill_, plan_stages
    report = distill_(student, teacher=teacher, batches=batches, config=recipe.distill, steps=100)
    report = distill_sharded_(student, teacher=cache, batches=batches, config=recipe.distill, steps=100, nproc=2,
                              workdir=tmp / "fsdp")                 # the student sharded with FSDP2 (sharded.py)

The names load on first use (PEP 562): `compressor.distill.schedule` is torch-free and the feasibility rules use it.
"""
from compressor.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    **dict.fromkeys(["KINDS", "TeacherTopK", "distill_loss", "divergence", "hidden_mse", "jsd", "kl", "next_token_ce",
                     "teacher_topk"], "losses"),
    **dict.fromkeys(["StageTarget", "geometric_ratios", "lr_at", "plan_stages", "split_steps"], "schedule"),
    **dict.fromkeys(["TeacherCache", "teacher_cache_dir"], "teacher"),
    **dict.fromkeys(["check_sharded", "distill_sharded_"], "sharded"),
    **dict.fromkeys(["DistillReport", "RankSlice", "bf16_autocast_supported", "distill_"], "trainer"),
})

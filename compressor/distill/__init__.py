"""Knowledge distillation from the original model into a slimmed student, and the multi-stage schedule.

    from compressor.distill import distill_, plan_stages
    report = distill_(student, teacher=teacher, batches=batches, config=recipe.distill, steps=100)
"""
from compressor.distill.losses import (KINDS, TeacherTopK, distill_loss, divergence, hidden_mse, jsd, kl,
                                       next_token_ce, teacher_topk)
from compressor.distill.schedule import StageTarget, geometric_ratios, plan_stages, split_steps
from compressor.distill.teacher import TeacherCache
from compressor.distill.trainer import DistillReport, bf16_autocast_supported, distill_, lr_at

__all__ = ["KINDS", "TeacherTopK", "distill_loss", "divergence", "hidden_mse", "jsd", "kl", "next_token_ce",
           "teacher_topk", "StageTarget", "geometric_ratios", "plan_stages", "split_steps", "TeacherCache",
           "DistillReport", "bf16_autocast_supported", "distill_", "lr_at"]

"""One engine, two drivers.

- `checkpoint.Checkpoint`: the source opened once (resolved, config, safetensors index, fingerprint, export dtype).
- `residency`: the torch-free rule that decides in memory or layer by layer (also used by the Compress tab's
  estimate), and what a layer-by-layer run refuses; `plan.plan_execution` applies it to the safetensors headers.
- `in_memory` (with `stages`) and `layered`: the two drivers, each `run(recipe, ckpt, plan, staging, reporter)`.
- `outputs`: the metrics record, model card, recipe.yaml and metrics.json every run writes.

`compressor.pipeline.run_recipe` chooses the driver once. This package's `__init__` imports nothing, so the
torch-free `residency` can be imported by the web page without torch.
"""

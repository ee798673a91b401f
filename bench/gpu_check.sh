#!/usr/bin/env bash
# One short check on a lent GPU machine (issue 23): the CUDA tests, then the original demo, a slimmed and a GPTQ
# W4A16 checkpoint (compressed-tensors) served by vLLM, with generation throughput and GPU memory for each.
#
#   OUT=/some/dir bash bench/gpu_check.sh          # the GPU tool sets $OUT; default bench/results/gpu
#   VLLM_INSTALL=0 PYTHON=.venv/bin/python bash bench/gpu_check.sh    # a dry run of the other steps on a CPU
#
# Every step has its own time limit and is recorded as ok / failed / skipped in $OUT/summary.md, so one failure
# (no network for `pip install vllm`, an old driver) does not stop the rest. About 6-8 minutes on an H100 when vLLM
# is preinstalled. Results: $OUT/summary.md, $OUT/vllm.json, copied to bench/results/gpu_check.md.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results/gpu}"
WORK="${WORK:-$(mktemp -d)}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
export PYTHONPATH=. HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

step() {   # step NAME SECONDS COMMAND...: run, log to $OUT/NAME.log, record the outcome
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc=0
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    echo "| $name | ok | $((SECONDS - t0)) s |" >>"$SUMMARY"
    return 0
  fi
  [ "$rc" = 124 ] && rc="timed out after $limit s" || rc="exit $rc"
  echo "| $name | failed ($rc; see $name.log) | $((SECONDS - t0)) s |" >>"$SUMMARY"
  return 1
}

{
  echo "# GPU check ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"
  "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); print("transformers", transformers.__version__)' 2>&1
  echo '```'
  echo
  echo "| step | outcome | wall |"
  echo "|---|---|---|"
} >"$SUMMARY"

# 1. CUDA tests: devices, GPTQ and the export on the GPU, the vLLM harness (skips where vLLM is absent)
step cuda_tests 240 "$PY" -m pytest -q -x tests/compressor/test_device.py tests/compressor/quantization/test_cuda.py \
  tests/compressor/evaluate/test_harness.py

# 2. vLLM: installed, or pip-installed into a throwaway venv under $WORK (never into the interpreter the project
#    runs on: vllm pins its own torch / transformers). Offline, pip fails fast: recorded, the rest goes on.
VPY="$PY"
if "$PY" -c 'import vllm' 2>/dev/null; then
  echo "| vllm | preinstalled $("$PY" -c 'import vllm; print(vllm.__version__)' 2>/dev/null) | 0 s |" >>"$SUMMARY"
  HAVE_VLLM=1
elif [ "${VLLM_INSTALL:-1}" = 0 ]; then
  echo "| vllm | not installed (VLLM_INSTALL=0) |  |" >>"$SUMMARY"
  HAVE_VLLM=0
elif "$PY" -m venv --system-site-packages "$WORK/vllm-venv" >/dev/null 2>&1 && VPY="$WORK/vllm-venv/bin/python" \
    && step pip_install_vllm 240 "$VPY" -m pip install -q --retries 0 --timeout 15 vllm; then
  HAVE_VLLM=1
else
  echo "| vllm | not available: pip install vllm failed (offline?); the serving figures are skipped |  |" >>"$SUMMARY"
  HAVE_VLLM=0
fi

# 3. The checkpoints: slimmed (REAP 8 -> 6 experts, no distillation) and GPTQ W4A16 of the original and of the slim
cat >"$WORK/slim.yaml" <<YAML
model: demo
slimming: {experts_keep: 6}
stages: 1
distill: {steps: 0}
evaluate: {speed: false, tokens: 4096}
execution: {device: auto}
YAML
step slim 180 "$PY" -m compressor run "$WORK/slim.yaml" --out "$WORK/slim" --no-progress
step quantize_w4 180 "$PY" -m compressor quantize demo --out "$WORK/w4a16" --scheme W4A16 --method gptq
step quantize_slim_w4 180 "$PY" -m compressor quantize "$WORK/slim/checkpoint" --out "$WORK/slim-w4a16" \
  --scheme W4A16 --method gptq --group-size 64

# 4. vLLM: throughput and memory per checkpoint, each in its own process (a clean GPU per model)
if [ "$HAVE_VLLM" = 1 ]; then
  DEMO_DIR=$("$PY" -c 'from compressor.sources import resolve_local; print(resolve_local("demo").local_dir)')
  for pair in "original:$DEMO_DIR" "slim:$WORK/slim/checkpoint" "w4a16:$WORK/w4a16" "slim-w4a16:$WORK/slim-w4a16"; do
    label=${pair%%:*}; path=${pair#*:}
    [ -f "$path/config.json" ] || { echo "| vllm_$label | skipped (no checkpoint) |  |" >>"$SUMMARY"; continue; }
    step "vllm_$label" 180 env VLLM_ENABLE_V1_MULTIPROCESSING=0 "$VPY" - "$label" "$path" "$OUT/vllm.jsonl" <<'PYEOF'
import json, logging, re, sys, time
import torch
from vllm import LLM, SamplingParams
label, path, out = sys.argv[1:4]
loaded = []
class Grab(logging.Handler):
    def emit(self, record):
        m = re.search(r"Model loading took ([\d.]+) GiB", record.getMessage())
        if m:
            loaded.append(float(m.group(1)))
logging.getLogger("vllm").addHandler(Grab())
free0, total = torch.cuda.mem_get_info()
llm = LLM(model=path, max_model_len=512, gpu_memory_utilization=0.3, enforce_eager=True, seed=0)
free1, _ = torch.cuda.mem_get_info()
prompts = ["The state of the union is"] * 64
params = SamplingParams(max_tokens=128, temperature=0.0, ignore_eos=True)
llm.generate(prompts[:4], params)                                   # warm-up
t0 = time.perf_counter()
outs = llm.generate(prompts, params)
dt = time.perf_counter() - t0
tokens = sum(len(o.outputs[0].token_ids) for o in outs)
row = {"model": label, "tokens_per_s": tokens / dt, "generated_tokens": tokens, "seconds": dt,
       "weights_gib": loaded[0] if loaded else None, "device_used_gib": (free0 - free1) / 2**30,
       "max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30, "sample": outs[0].outputs[0].text[:80]}
with open(out, "a") as f:
    f.write(json.dumps(row) + "\n")
print(row)
PYEOF
  done
  # lm-eval through its vllm backend on the W4A16 checkpoint (one shipped task, 100 examples)
  step lm_eval_vllm_w4a16 180 "$VPY" -m compressor eval "$WORK/w4a16" --lm-eval sotu_cloze --lm-eval-limit 100 \
    --lm-eval-backend vllm --no-speed --no-perplexity --no-progress
fi

# 5. The table
"$PY" - "$OUT" <<'PYEOF' >>"$SUMMARY"
import json, pathlib, sys
rows = [json.loads(l) for l in (pathlib.Path(sys.argv[1]) / "vllm.jsonl").read_text().splitlines()] \
    if (pathlib.Path(sys.argv[1]) / "vllm.jsonl").is_file() else []
print()
if not rows:
    print("No vLLM figures (see the steps above).")
else:
    print("| model | generated tokens / s (64 x 128, greedy) | weights GiB (vLLM) | device memory used GiB | sample |")
    print("|---|---|---|---|---|")
    for r in rows:
        w = f"{r['weights_gib']:.3f}" if r["weights_gib"] is not None else "-"
        print(f"| {r['model']} | {r['tokens_per_s']:.0f} | {w} | {r['device_used_gib']:.2f} | {r['sample']!r} |")
PYEOF
cp "$SUMMARY" bench/results/gpu_check.md 2>/dev/null || true
cat "$SUMMARY"

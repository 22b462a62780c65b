#!/usr/bin/env bash
# Device call B (the soak may be running beside it): #17's correctness runs — Gemma-2 rerun of the
# architecture table, the real 0.5B float32 equivalence and the LA stress run; each bounded in time.
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
export BENCH_GIT_REVISION=${BENCH_GIT_REVISION:-unknown}
bash bench/gpu/host_setup.sh > /dev/null || exit 1
M=/tmp/ahome/models/qwen2.5-coder-0.5b-instruct/hf
timeout ${ARCHS_S:-230} python3 -m bench.vllm_archs --tokenizer /tmp/tok --work /tmp/archs2 --out "$OUT/archs" \
  --families gemma2 --no-serve --deadline-s $(( ${ARCHS_S:-230} - 20 )) || echo "archs exit $?"
timeout ${EQ_S:-320} python3 -m bench.vllm_bench gpu equivalence_fp32 stress --model "$M" --out "$OUT/gpu" || echo "gpu exit $?"
tail -3 /tmp/soak/run.log 2>/dev/null; ls /tmp/soak 2>/dev/null

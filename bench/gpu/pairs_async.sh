#!/usr/bin/env bash
# LA pairing under vLLM's async scheduling vs synchronous: one phase per device call (each fits in 10 min).
#   PHASES="equivalence" bash bench/gpu/pairs_async.sh     # then "stress", then "interleaved"
# Needs the vLLM stages (/tmp/stage, ../shared/gpu/prepare.sh) and .gpuw (service wheels + tokenizer) carried,
# as bench/gpu/session_final.sh does. MODEL defaults to a random-weight 0.5B Qwen2 with a peaked head;
# SHAPE=7b builds the 7B shape instead. Results land in $OUT (vllm_pairs_*_<device>.json/.md).
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
export BENCH_GIT_REVISION=${BENCH_GIT_REVISION:-unknown}
[ -f /tmp/site/.installed ] || { bash /tmp/stage/install.sh
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpuw/whl/*.whl 2>&1 | grep -v WARNING || true
  touch /tmp/site/.installed; }
SHAPE=${SHAPE:-0.5b}
MODEL=${MODEL:-/tmp/rand-$SHAPE}
[ -f "$MODEL/config.json" ] || python3 -m bench.random_checkpoint --shape "$SHAPE" --tokenizer .gpuw/tok --out "$MODEL"
python3 -m bench.vllm_bench pairs ${PHASES:-equivalence} --model "$MODEL" --out "$OUT" ${EXTRA:-}

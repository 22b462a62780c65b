#!/usr/bin/env bash
# Device call B (the soak may be running beside it): correctness runs, each bounded in time and skipped
# when its budget is 0 — Gemma-2 rerun of the architecture table (ARCHS_S), the real 0.5B float32
# equivalence and LA stress (EQ_S), async LA pairing's equivalence and stress on the random 0.5B (PAIRS_S);
# SEVEN_B=1 then builds the random-weight 7B shape into /tmp/rand-7b for session_c.sh.
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
export BENCH_GIT_REVISION=${BENCH_GIT_REVISION:-unknown}
bash bench/gpu/host_setup.sh > /dev/null || exit 1
M=/tmp/ahome/models/qwen2.5-coder-0.5b-instruct/hf
[ "${ARCHS_S:-230}" = 0 ] || timeout ${ARCHS_S:-230} python3 -m bench.vllm_archs --tokenizer /tmp/tok --work /tmp/archs2 --out "$OUT/archs" \
  --families gemma2 --no-serve --deadline-s $(( ${ARCHS_S:-230} - 20 )) || echo "archs exit $?"
[ "${EQ_S:-320}" = 0 ] || timeout ${EQ_S:-320} python3 -m bench.vllm_bench gpu equivalence_fp32 stress --model "$M" --out "$OUT/gpu" || echo "gpu exit $?"
if [ "${PAIRS_S:-0}" != 0 ]; then
  [ -f /tmp/rand-0.5b/config.json ] || python3 -m bench.random_checkpoint --shape 0.5b --tokenizer /tmp/tok --out /tmp/rand-0.5b
  timeout "$PAIRS_S" python3 -m bench.vllm_bench pairs equivalence stress --model /tmp/rand-0.5b --out "$OUT/pairs" \
    || echo "pairs exit $?"
fi
[ -z "${SEVEN_B:-}" ] || [ -f /tmp/rand-7b/config.json ] || \
  python3 -m bench.random_checkpoint --shape 7b --tokenizer /tmp/tok --out /tmp/rand-7b || echo "7b build exit $?"
tail -3 /tmp/soak/run.log 2>/dev/null; ls /tmp/soak 2>/dev/null

#!/usr/bin/env bash
# Device call B (the soak may be running beside it): correctness runs, each bounded in time and skipped
# when its budget is 0 — SEVEN_B=1 first builds the random-weight 7B shape into /tmp/rand-7b (for
# session_c.sh); Gemma-2 rerun of the architecture table (ARCHS_S), the real 0.5B float32 equivalence and
# LA stress (EQ_S), async LA pairing's proof on the random 0.5B (PAIRS_S; PAIRS_PHASES, default
# "equivalence stress"; PAIRS_ARGS). No step runs past CALL_S (default 580 s) from the call's start.
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
export BENCH_GIT_REVISION=${BENCH_GIT_REVISION:-unknown}
left() { local l=$(( ${CALL_S:-580} - SECONDS )); [ "$1" -lt "$l" ] && echo "$1" || echo $(( l > 1 ? l : 1 )); }
bash bench/gpu/host_setup.sh > /dev/null || exit 1
M=/tmp/ahome/models/qwen2.5-coder-0.5b-instruct/hf
[ -z "${SEVEN_B:-}" ] || [ -f /tmp/rand-7b/config.json ] || \
  python3 -m bench.random_checkpoint --shape 7b --tokenizer /tmp/tok --out /tmp/rand-7b || echo "7b build exit $?"
echo "after 7b build: ${SECONDS}s"
[ "${ARCHS_S:-0}" = 0 ] || timeout "$(left "$ARCHS_S")" python3 -m bench.vllm_archs --tokenizer /tmp/tok --work /tmp/archs2 \
  --out "$OUT/archs" --families gemma2 --no-serve --deadline-s $(( ARCHS_S - 20 )) || echo "archs exit $?"
[ "${EQ_S:-0}" = 0 ] || timeout "$(left "$EQ_S")" python3 -m bench.vllm_bench gpu equivalence_fp32 stress --model "$M" \
  --out "$OUT/gpu" || echo "gpu exit $?"
if [ "${PAIRS_S:-0}" != 0 ]; then
  [ -f /tmp/rand-0.5b/config.json ] || python3 -m bench.random_checkpoint --shape 0.5b --tokenizer /tmp/tok --out /tmp/rand-0.5b
  timeout "$(left "$PAIRS_S")" python3 -m bench.vllm_bench pairs ${PAIRS_PHASES:-equivalence stress} --model /tmp/rand-0.5b \
    --out "$OUT/pairs" ${PAIRS_ARGS:-} || echo "pairs exit $?"
fi
echo "call B done: ${SECONDS}s"
tail -3 /tmp/soak/run.log 2>/dev/null; ls /tmp/soak 2>/dev/null

#!/usr/bin/env bash
# Device call C: collect the soak (waits for /tmp/soak/DONE), then the engine-level interleaved
# benchmark on a quiet GPU (random-weight 0.5B Qwen2, peaked head): #18's ratios, #17's steering overhead;
# with PAIRS_IL_S > 0 also the pairing modes side by side (stock at C and 2C, sync vs async LA pairing);
# with PROF_S > 0 first the py-spy profile of stock vs glue workloads (gpu profile). IL_MODEL picks the
# interleaved run's model (default the random 0.5B; /tmp/rand-7b once session_b.sh built it).
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
export BENCH_GIT_REVISION=${BENCH_GIT_REVISION:-unknown} PATH=/tmp/site/bin:$PATH
bash bench/gpu/host_setup.sh > /dev/null || exit 1
for _ in $(seq 1 ${SOAK_WAIT_S:-300}); do [ -f /tmp/soak/DONE ] && break; sleep 1; done
cp /tmp/soak0/run.log /tmp/soak/run.log 2>/dev/null
(cd /tmp/soak && tar czf "$OUT/soak.tgz" soak_*.json soak_*.md gpu.txt exit_code soak_exit ready_at server.log run.log 2>/dev/null) ; ls -la /tmp/soak
cat /tmp/soak/soak_*.md 2>/dev/null | head -30
[ -f /tmp/rand-0.5b/config.json ] || python3 -m bench.random_checkpoint --shape 0.5b --tokenizer /tmp/tok --out /tmp/rand-0.5b
[ "${PROF_S:-0}" = 0 ] || timeout "$PROF_S" python3 -m bench.vllm_bench gpu profile --model /tmp/rand-0.5b --out "$OUT/prof" \
  ${PROF_ARGS:-} || echo "profile exit $?"
[ "${IL_S:-400}" = 0 ] || timeout ${IL_S:-400} python3 -m bench.vllm_bench ${IL_SUITE:-gpu} ${IL_PHASES:-interleaved} \
  --model ${IL_MODEL:-/tmp/rand-0.5b} --out "$OUT/il" ${IL_ARGS:-} || echo "il exit $?"
[ "${PAIRS_IL_S:-0}" = 0 ] || timeout "$PAIRS_IL_S" python3 -m bench.vllm_bench pairs interleaved --model /tmp/rand-0.5b \
  --out "$OUT/pairs_il" ${PAIRS_IL_ARGS:-} || echo "pairs interleaved exit $?"

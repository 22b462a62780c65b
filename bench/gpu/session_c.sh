#!/usr/bin/env bash
# Device call C: collect the soak (waits up to SOAK_WAIT_S for /tmp/soak/DONE; SOAK_WAIT_S=0 skips it),
# then the engine-level interleaved benchmark on a quiet GPU: #18's ratios, #17's steering overhead.
# IL_MODEL picks the model (default the random 0.5B; /tmp/rand-7b, built here with SEVEN_B=1), IL_ARGS
# the phase's options (e.g. --il-pairing async --il-no-steer-only); with PROF_S > 0 first the py-spy
# profile (gpu profile); with PAIRS_IL_S > 0 last the pairing modes side by side (pairs interleaved).
# No step runs past CALL_S (default 585 s) from the call's start.
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
export BENCH_GIT_REVISION=${BENCH_GIT_REVISION:-unknown} PATH=/tmp/site/bin:$PATH
left() { local l=$(( ${CALL_S:-585} - SECONDS )); [ "$1" -lt "$l" ] && echo "$1" || echo $(( l > 1 ? l : 1 )); }
bash bench/gpu/host_setup.sh > /dev/null || exit 1
if [ "${SOAK_WAIT_S:-300}" != 0 ]; then
  for _ in $(seq 1 "${SOAK_WAIT_S:-300}"); do [ -f /tmp/soak/DONE ] && break; sleep 1; done
  cp /tmp/soak0/run.log /tmp/soak/run.log 2>/dev/null
  (cd /tmp/soak && tar czf "$OUT/soak.tgz" soak_*.json soak_*.md gpu.txt exit_code soak_exit ready_at server.log run.log \
    2>/dev/null); ls -la /tmp/soak; cat /tmp/soak/soak_*.md 2>/dev/null | head -30
  echo "soak collected: ${SECONDS}s"
fi
[ -f /tmp/rand-0.5b/config.json ] || python3 -m bench.random_checkpoint --shape 0.5b --tokenizer /tmp/tok --out /tmp/rand-0.5b
# SEVEN_B=1: build the random-weight 7B shape first if no earlier call did
[ -z "${SEVEN_B:-}" ] || [ -f /tmp/rand-7b/config.json ] || \
  python3 -m bench.random_checkpoint --shape 7b --tokenizer /tmp/tok --out /tmp/rand-7b || echo "7b build exit $?"
echo "models ready: ${SECONDS}s"
# MICRO=1: the sort-free nucleus against the full sort, and the step's no-host-wait checks (seconds)
[ -z "${MICRO:-}" ] || { timeout "$(left 120)" python3 -m bench.nucleus_gpu --out "$OUT" || echo "nucleus_gpu exit $?"
  timeout "$(left 60)" python3 -m bench.sync_free --out "$OUT" || echo "sync_free exit $?"; }
[ "${PROF_S:-0}" = 0 ] || timeout "$(left "$PROF_S")" python3 -m bench.vllm_bench gpu profile --model /tmp/rand-0.5b \
  --out "$OUT/prof" ${PROF_ARGS:-} || echo "profile exit $?"
[ "${IL_S:-400}" = 0 ] || timeout "$(left "${IL_S:-400}")" python3 -m bench.vllm_bench ${IL_SUITE:-gpu} ${IL_PHASES:-interleaved} \
  --model ${IL_MODEL:-/tmp/rand-0.5b} --out "$OUT/il" ${IL_ARGS:-} || echo "il exit $?"
[ "${PAIRS_IL_S:-0}" = 0 ] || timeout "$(left "$PAIRS_IL_S")" python3 -m bench.vllm_bench pairs interleaved \
  --model /tmp/rand-0.5b --out "$OUT/pairs_il" ${PAIRS_IL_ARGS:-} || echo "pairs interleaved exit $?"
echo "call C done: ${SECONDS}s"

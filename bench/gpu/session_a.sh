#!/usr/bin/env bash
# Device call A (after the stage calls): set the host up, run the fault phases (#20), then start the
# 10-minute soak detached (FAULTS_S=0 skips the faults; SEVEN_B=1 then builds the 7B shape) (bench/gpu/soak.sh; collected by a later call from /tmp/soak).
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
export BENCH_GIT_REVISION=${BENCH_GIT_REVISION:-unknown}
bash bench/gpu/host_setup.sh || exit 1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
# SOAK_MODEL=random: faults and soak on a random-weight 0.5B + a random one-label RM, built here (no GGUF
# parts to carry: 5 stage calls instead of 13); soak.sh reuses the folders
FAULT_MODEL=()
if [ "${SOAK_MODEL:-embedded}" = random ]; then
  [ -f /tmp/rand-0.5b/config.json ] && [ -f /tmp/rand-rm-0.5b/config.json ] || python3 -m bench.random_checkpoint \
    --shape 0.5b --tokenizer /tmp/tok --out /tmp/rand-0.5b --reward-out /tmp/rand-rm-0.5b || exit 1
  FAULT_MODEL=(--model /tmp/rand-0.5b --reward-model /tmp/rand-rm-0.5b)
fi
[ "${FAULTS_S:-420}" = 0 ] || timeout ${FAULTS_S:-420} python3 -m bench.vllm_bench faults ${FAULT_PHASES:-vllm transformers_oom} --home /tmp/ahome \
  "${FAULT_MODEL[@]}" --out "$OUT" || echo "faults exit $?"
cp /tmp/faults/*.log "$OUT/" 2>/dev/null; (cd /tmp/faults && tar czf "$OUT/fault_logs.tgz" *.log) 2>/dev/null
[ -n "${NO_SOAK:-}" ] || { mkdir -p /tmp/soak0; rm -f /tmp/soak/ready_at; setsid nohup bash bench/gpu/soak.sh > /tmp/soak0/run.log 2>&1 < /dev/null &
  # return only once the soak's server is ready, reward model included: a benchmark started beside a
  # vLLM engine that is still profiling its memory makes that engine fail (the 2026-12-07 H100 soak)
  for _ in $(seq 1 ${SOAK_READY_S:-420}); do [ -f /tmp/soak/ready_at ] && break; sleep 1; done
  echo "soak started; server ready: $(cat /tmp/soak/ready_at 2>/dev/null || echo no)"
  python3 -c "import httpx; print(httpx.get('http://127.0.0.1:18200/readyz', timeout=5).text[:300])" || true; }
# SEVEN_B=1: build the random-weight 7B shape (CPU and disk only) while the soak runs, for session_c.sh
[ -z "${SEVEN_B:-}" ] || [ -f /tmp/rand-7b/config.json ] || \
  python3 -m bench.random_checkpoint --shape 7b --tokenizer /tmp/tok --out /tmp/rand-7b || echo "7b build exit $?"
echo "call A done: ${SECONDS}s"

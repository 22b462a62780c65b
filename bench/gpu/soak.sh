#!/usr/bin/env bash
# The 10-minute GPU soak (#20), meant to run detached so other device calls can follow:
#   setsid nohup bash bench/gpu/soak.sh > /tmp/soak/run.log 2>&1 < /dev/null &
# Runs from a private copy of the checkout (/tmp/soakrepo) so later calls may replace the tree.
# `alignserve serve --backend vllm` on the embedded 0.5B with its English RM (or SOAK_MODEL=random, below) (max 64 sequences, 64 queued),
# bench/soak.py at 2x that capacity; the server's per-process GPU memory sampled by nvidia-smi every 10 s.
# Results in /tmp/soak: soak_<device>.json/.md, gpu.txt, server.log, exit_code; DONE at the end.
set -uo pipefail
W=/tmp/soak; R=/tmp/soakrepo
rm -rf "$W" "$R"; mkdir -p "$W" && cp -r "$PWD" "$R" && cd "$R" || exit 1
export PYTHONPATH=/tmp/site:$R VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
DUR=${SOAK_S:-600}
# SOAK_MODEL=random: a random-weight Qwen2 at the 0.5B shape and a random one-label RM folder, built here
# (only .stage1-5 + .gpuw need carrying, not the GGUF's nine parts); default: the embedded model + its shipped RM
MODEL=embedded:qwen2.5-coder-0.5b-instruct; RM=auto
if [ "${SOAK_MODEL:-embedded}" = random ]; then
  [ -f /tmp/rand-0.5b/config.json ] && [ -f /tmp/rand-rm-0.5b/config.json ] || python3 -m bench.random_checkpoint \
    --shape 0.5b --tokenizer /tmp/tok --out /tmp/rand-0.5b --reward-out /tmp/rand-rm-0.5b || exit 1
  MODEL=/tmp/rand-0.5b; RM=/tmp/rand-rm-0.5b
fi
python3 -m service.cli serve --backend vllm --model "$MODEL" --reward-model "$RM" --home /tmp/ahome \
  --db-url "sqlite:///$W/profiles.db" --port 18200 --gpu-memory-utilization 0.2 --reward-gpu-memory-utilization 0.06 \
  --max-num-seqs 64 --max-queue 64 --log-format json > "$W/server.log" 2>&1 &
SRV=$!
python3 -c "
import time, httpx
for _ in range(400):
    try:
        if httpx.get('http://127.0.0.1:18200/readyz', timeout=2).status_code == 200: break
    except httpx.HTTPError: pass
    time.sleep(1)"
date +%s > "$W/ready_at.tmp" && mv "$W/ready_at.tmp" "$W/ready_at"
DEV=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
( while kill -0 $SRV 2>/dev/null; do
    pids=$(python3 -c "import psutil,sys; p=psutil.Process($SRV); print(' '.join(str(x.pid) for x in [p]+p.children(recursive=True)))" 2>/dev/null)
    echo "$(date +%s) [$pids] $(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits | tr '\n' ';')" >> "$W/gpu.txt"
    sleep 10; done ) &
python3 -m bench.soak --url http://127.0.0.1:18200 --duration "$DUR" --concurrency 128 --max-tokens 64 \
  --hang-after 120 --device "$DEV" --out "$W/soak_$(python3 -c "from bench.harness import device_tag; import sys; print(device_tag(sys.argv[1]))" "$DEV")"
echo "soak exit $?" > "$W/soak_exit"
kill -TERM $SRV; wait $SRV; echo $? > "$W/exit_code"
touch "$W/DONE"

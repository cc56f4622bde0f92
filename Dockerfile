# syntax=docker/dockerfile:1
#
# health-sidecar: the image that runs beside every app container.
#
# Build:
#   docker build -t health-sidecar .
#
# Run (read-only root file system: the daemon writes nothing to disk and logs JSON to stdout):
#   docker run -d --name health-sidecar --read-only --cap-drop ALL \
#     --security-opt no-new-privileges --stop-timeout 30 -p 8099:8099 \
#     -e CONVEX_URL=https://your-deployment.convex.cloud \
#     -e MASTRA_URL=http://mastra:4111 \
#     -e HEALTH_SIDECAR_SECRET=... \
#     -e SIDECAR_APP_URL=http://app:3000/api/health \
#     health-sidecar
#
# --stop-timeout must outlast the daemon's drain after SIGTERM: see README.md, "Lifecycle"
# (README.md#lifecycle), for the drain and the numbers.
#
# `health-sidecar config` prints the effective settings (secrets masked):
#   docker run --rm --read-only -e CONVEX_URL=... -e HEALTH_SIDECAR_SECRET=... health-sidecar \
#     health-sidecar config
#
# tests/clients/docker/test_dockerfile.py parses this file and replays the build stage's RUN lines
# into a clean venv, then runs CMD and HEALTHCHECK from it: keep them plain.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a venv at /opt/venv holding the package and its runtime dependencies only ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /build
RUN python -m venv /opt/venv
# README.md* : the metadata's readme, copied when present (the glob keeps the build going
# without it; pyproject.toml must match).
COPY pyproject.toml README.md* ./
COPY sidecar ./sidecar
# No `[dev]` extras. pip compiles the .pyc files here, at build time, so the runtime never
# needs to write them (PYTHONDONTWRITEBYTECODE below).
RUN /opt/venv/bin/pip install --no-cache-dir .

# ---- runtime: the base image plus /opt/venv, nothing else ----
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="health-sidecar" \
      org.opencontainers.image.description="Health sidecar for Convex + Mastra app containers: /live /ready /health /metrics" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="MIT"

# A fixed, unprivileged uid/gid (Kubernetes' runAsNonRoot can verify a numeric USER).
RUN groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin sidecar

COPY --from=build /opt/venv /opt/venv

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    SIDECAR_PORT=8099

USER 10001:10001
EXPOSE 8099
STOPSIGNAL SIGTERM

# Liveness only (`/live`), never `--ready`: Docker restarts unhealthy containers, so a check
# that followed a shared dependency would turn a Mastra or Convex outage into a restart of
# the whole fleet. Readiness (`/ready`) is for the load balancer, which only stops routing.
# `health-sidecar check` is Python's urllib, so the image needs no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["health-sidecar", "check"]

CMD ["health-sidecar", "run"]

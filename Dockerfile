# health-sidecar: the image that runs beside every app container.
#
# Build (`make image` does this; the version label comes from the package, sidecar/__init__.py):
#   docker build --build-arg VERSION="$(python3 -c 'import sidecar; print(sidecar.__version__)')" \
#     -t health-sidecar .
#
# Run (read-only root file system: the daemon writes nothing to disk and logs JSON to stdout),
# in its app container's network namespace (docs/deploy/docker.md):
#   docker run -d --name health-sidecar --read-only --cap-drop ALL \
#     --security-opt no-new-privileges --stop-timeout 30 --network container:app-1 \
#     -e CONVEX_URL=https://your-deployment.convex.cloud \
#     -e MASTRA_URL=http://mastra:4111 \
#     -e HEALTH_SIDECAR_SECRET \
#     -e SIDECAR_APP_URL=http://127.0.0.1:3000/api/health \
#     health-sidecar
#
# --stop-timeout must outlast the daemon's drain after SIGTERM: see README.md, "Lifecycle"
# (README.md#lifecycle), for the drain and the numbers.
#
# `health-sidecar config` prints the effective settings (secrets masked):
#   docker run --rm --read-only -e CONVEX_URL=... -e HEALTH_SIDECAR_SECRET=... health-sidecar \
#     health-sidecar config
#
# No `# syntax=` line: BuildKit's built-in Dockerfile frontend builds it, so the build fetches
# nothing but the base image (and, from the package index, the dependencies).
# tests/clients/docker/ builds this file on a real engine and runs the image as docs/deploy/docker.md
# says; test_dockerfile.py also reads it.

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
# needs to write them (PYTHONDONTWRITEBYTECODE below). Then pip and setuptools leave the venv:
# the daemon never uses them.
# Optional build secrets, mounted for this RUN only and never stored in a layer: `pip.conf`
# (pip's settings, e.g. a private index) and `ca.crt` (a CA bundle for the index, e.g. behind
# a TLS-inspecting proxy): `docker build --secret id=ca.crt,src=/etc/ssl/certs/ca-certificates.crt`.
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \
    if [ -f /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi \
    && if [ -f /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools
# The version label's one source is the package: a VERSION build argument that differs from
# sidecar.__version__ stops the build here. Without one the label is empty, never wrong.
ARG VERSION=
RUN /opt/venv/bin/python -c 'import sys, sidecar; v = sidecar.__version__; sys.exit(0 if sys.argv[1] in ("", v) else f"build argument VERSION={sys.argv[1]!r}, but the package is {v}: docker build --build-arg VERSION={v}")' "$VERSION"

# ---- runtime: the base image plus /opt/venv, nothing else ----
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=

LABEL org.opencontainers.image.title="health-sidecar" \
      org.opencontainers.image.description="Health sidecar for Convex + Mastra app containers: /live /ready /health /metrics" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"

# A fixed, unprivileged uid/gid (Kubernetes' runAsNonRoot can verify a numeric USER). Not
# `--system`: 10001 lies in login.defs' UID_MIN..UID_MAX, above SYS_UID_MAX (useradd would
# warn). A base image that ships pip, setuptools or wheel outside the venv (python:*-slim
# does) loses them here: nothing at run time uses them.
RUN if python3 -m pip --version >/dev/null 2>&1; then \
      python3 -m pip uninstall --yes --root-user-action=ignore --disable-pip-version-check \
        $(python3 -c 'import importlib.metadata as m; print(*{d.metadata["Name"].lower() for d in m.distributions()} & {"pip", "setuptools", "wheel"})'); \
    fi \
    && groupadd --gid 10001 sidecar \
    && useradd --uid 10001 --gid 10001 --no-create-home --no-log-init \
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

# syntax=docker/dockerfile:1
#
# Aeterna Hybrid: one image for central and edge.
#   docker build -t ghcr.io/aeterna/aeterna-hybrid:0.1.0 .
#   docker run IMAGE central --config /etc/aeterna/config.yaml
#   docker run IMAGE edge --config /etc/aeterna/config.yaml
#
# The base is pinned by tag. Pin it by digest too when you build
# (python:3.11-slim-bookworm@sha256:...): the digest could not be resolved
# where this file was written (no registry access), so none is recorded here.
# No redis-server: in Kubernetes the edge's cache is the Dragonfly sidecar
# (cache.url); outside it, point cache.url at any Redis/Dragonfly.
#
# Dependencies come from requirements/image.lock (runtime, with the qdrant
# extra) and requirements/build.lock (the wheel's build backend), both pinned
# with hashes; regenerate them with `.venv/bin/python requirements/image_lock.py`
# after changing pyproject.toml's dependencies (docs/deploy.md, "Images").

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the locked dependencies and the project's wheel into a virtualenv --
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# No pip, setuptools or wheel in the runtime virtualenv: the build stage's pip
# installs into it (pip --python).
RUN python -m venv --without-pip /opt/aeterna
WORKDIR /src
# The locks first, so code edits do not rebuild the dependency layer.
COPY requirements/image.lock requirements/build.lock ./requirements/
RUN python -m pip --python /opt/aeterna/bin/python install --require-hashes --no-deps --only-binary :all: \
        -r requirements/image.lock \
 && python -m pip install --require-hashes --no-deps --only-binary :all: -r requirements/build.lock
COPY pyproject.toml README.md ./
COPY aeterna_shared ./aeterna_shared
COPY aeterna_cli ./aeterna_cli
COPY central_svc ./central_svc
COPY edge_svc ./edge_svc
COPY interceptors ./interceptors
COPY aeterna_security ./aeterna_security
COPY aeterna_client ./aeterna_client
COPY aeterna_server ./aeterna_server
COPY generated ./generated
# The project itself without dependencies (all of them came from the lock),
# built by the locked setuptools; then prove the set is complete and importable.
RUN python -m pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
 && python -m pip --python /opt/aeterna/bin/python install --no-deps --no-index /tmp/wheels/aeterna_hybrid-*.whl \
 && python -m pip --python /opt/aeterna/bin/python check \
 && /opt/aeterna/bin/python -c "import aeterna_cli.main, central_svc.__main__, edge_svc.__main__"

# --- runtime: the virtualenv only, as a non-root user ------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
ENV PATH=/opt/aeterna/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AETERNA_CONFIG=/etc/aeterna/config.yaml
RUN groupadd --system --gid ${UID} aeterna \
 && useradd --system --uid ${UID} --gid aeterna --home-dir /var/lib/aeterna --shell /usr/sbin/nologin aeterna \
 && mkdir -p /var/lib/aeterna /etc/aeterna \
 && chown aeterna:aeterna /var/lib/aeterna
COPY --from=build /opt/aeterna /opt/aeterna
USER ${UID}:${UID}
WORKDIR /var/lib/aeterna
# 8081 central sync/policy API, 50051 edge agent API, 8080 /metrics,
# 8082 plaintext health for kubelet gRPC probes when TLS is on.
EXPOSE 8081 50051 8080 8082
# Liveness of the process $AETERNA_CONFIG configures (telemetry.healthPort when
# set, else the edge's or central's own port); exit 0 SERVING, 1 otherwise.
# Kubernetes ignores HEALTHCHECK: the chart's gRPC probes do the same there.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["aeterna", "health", "--service", "aeterna.liveness", "--timeout", "5"]
ENTRYPOINT ["aeterna"]
CMD ["--help"]

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

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: install the package and its dependencies into a virtualenv -------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/aeterna
ENV PATH=/opt/aeterna/bin:$PATH
WORKDIR /src
# Dependency metadata first, so code edits do not rebuild the dependency layer.
COPY pyproject.toml README.md* ./
COPY aeterna_shared ./aeterna_shared
COPY aeterna_cli ./aeterna_cli
COPY central_svc ./central_svc
COPY edge_svc ./edge_svc
COPY interceptors ./interceptors
COPY aeterna_security ./aeterna_security
COPY aeterna_client ./aeterna_client
COPY aeterna_server ./aeterna_server
COPY generated ./generated
# qdrant: central's optional Qdrant-server backend (values-central.yaml uses it).
RUN pip install --upgrade pip setuptools wheel \
 && pip install ".[qdrant]" \
 && python -c "import aeterna_cli.main, central_svc.__main__, edge_svc.__main__"

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
ENTRYPOINT ["aeterna"]
CMD ["--help"]

# Hanzo Registry: one image for every service. `hanzo-registry <command>` is the entry point:
#   docker run IMAGE serve | distribution | scanner | signer | gc | replicator | webhooks | check-config
# Built from the hashed lock file (requirements.lock): the runtime dependencies at exactly the locked versions
# and hashes (the lock also holds the dev tools, which the image leaves out).
#
#   buildah bud --isolation chroot -t hanzo-registry:dev .        # or: docker build -t hanzo-registry:dev .
#
# BASE: any Debian bookworm-based image with Python 3.11 (python3, python3-venv, ca-certificates), e.g. the
# official python:3.11-slim-bookworm, or a rootfs made with debootstrap (see docs/ci-cd.md).
ARG BASE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE} AS build
# The system CA bundle for pip and uv (behind a TLS-inspecting proxy, mount yours over it for the build:
# buildah bud -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro ...).
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt UV_NATIVE_TLS=1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 UV_NO_CACHE=1 UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
WORKDIR /src
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --quiet "uv==0.9.*" \
 && python3 -m venv --without-pip /opt/hanzo-registry
COPY requirements.lock pyproject.toml ./
# The runtime subset of the lock, at its versions and hashes (no dev extra), then installed hash-checked.
# This layer depends on the lock and pyproject only (the README pyproject names is a placeholder here), so an
# edit of the code or the docs rebuilds just the last step.
RUN touch README.md \
 && /opt/uv/bin/uv pip compile pyproject.toml --python-version 3.11 --constraint requirements.lock \
        --generate-hashes --no-header -q -o runtime.lock \
 && /opt/uv/bin/uv pip install --python /opt/hanzo-registry/bin/python --require-hashes -r runtime.lock
COPY README.md ./
COPY services ./services
RUN /opt/uv/bin/uv pip install --python /opt/hanzo-registry/bin/python --no-deps --no-build-isolation . \
 || /opt/uv/bin/uv pip install --python /opt/hanzo-registry/bin/python --no-deps .

FROM ${BASE}
LABEL org.opencontainers.image.title="hanzo-registry" \
      org.opencontainers.image.description="OCI registry for container images and ML model artifacts" \
      org.opencontainers.image.source="https://github.com/hanzoai/registry" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 hanzo \
 && useradd --system --uid 10001 --gid hanzo --home-dir /var/lib/hanzo-registry --shell /usr/sbin/nologin hanzo \
 && mkdir -p /var/lib/hanzo-registry /etc/hanzo-registry && chown hanzo:hanzo /var/lib/hanzo-registry
COPY --from=build /opt/hanzo-registry /opt/hanzo-registry
ENV PATH=/opt/hanzo-registry/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HANZO_REGISTRY_DATA_DIR=/var/lib/hanzo-registry HANZO_REGISTRY_ADDR=0.0.0.0:5000
USER 10001:10001
WORKDIR /var/lib/hanzo-registry
EXPOSE 5000 9090 9100
ENTRYPOINT ["/opt/hanzo-registry/bin/hanzo-registry"]
CMD ["serve"]

# syntax=docker/dockerfile:1
# shipper: log-shipping sidecar that tails files into Kafka.
#
#   docker build -t shipper .                      # or: podman build --format docker -t shipper .
#   docker build --build-arg SHIPPER_EXTRAS=zstd,lz4 -t shipper .   # add compression codecs
#   docker run --rm -v /var/log/app:/var/log/app:ro -v shipper-state:/var/lib/shipper \
#       --group-add "$(stat -c %g /var/log/app)" -e KAFKA_BOOTSTRAP=kafka:9092 shipper
#
# Mount the logs to tail read-only, and a volume on /var/lib/shipper so the registry
# (file positions) survives restarts. Mount your own config over /etc/shipper/shipper.yaml.
# The process runs as uid 10001 (group 10001): it must be able to list the log directories
# and read the files, so add the group that owns them with --group-add (Kubernetes:
# securityContext.supplementalGroups). A directory it cannot list is reported, not shipped.
# The example config listens on $SHIPPER_METRICS_LISTEN (0.0.0.0:9108 in this image).
#
# Podman keeps HEALTHCHECK only with --format docker (the OCI format drops it).
# BASE_IMAGE lets a machine without a registry build on a local Debian image instead
# (scripts/base-image); SHIPPER_EXTRAS names optional extras (zstd, lz4, snappy, all-codecs):
# gzip is always there, and a config naming a codec that is not installed fails validation.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- builder: shipper and every dependency, installed under /install ------------------
FROM ${BASE_IMAGE} AS builder
ARG SHIPPER_EXTRAS=""

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY shipper ./shipper
# `pip wheel .` builds from the local tree and resolves the version ranges declared in
# pyproject.toml, so there is no bare package name for DL3013 to pin here.
# Then install offline from those wheels only, under /install (the runtime's own paths
# below it); the wheel is named by its path, so nothing is resolved by name.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".${SHIPPER_EXTRAS:+[$SHIPPER_EXTRAS]}" \
 && wheel="$(basename /wheels/shipper-*.whl)" \
 && pip install --no-cache-dir --no-index --find-links=/wheels --root /install \
        --no-warn-script-location "/wheels/${wheel}${SHIPPER_EXTRAS:+[$SHIPPER_EXTRAS]}"

# ---- runtime -------------------------------------------------------------------------
FROM ${BASE_IMAGE}

# The example config reads these; listen on all interfaces so Prometheus can scrape.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SHIPPER_METRICS_LISTEN=0.0.0.0:9108

# A fixed uid/gid so volume ownership is predictable across hosts and rebuilds.
RUN groupadd --system --gid 10001 shipper \
 && useradd --system --uid 10001 --gid shipper --no-create-home \
        --home-dir /var/lib/shipper --shell /usr/sbin/nologin shipper \
 && install -d -o shipper -g shipper -m 0750 /var/lib/shipper \
 && install -d -m 0755 /etc/shipper

# The installed files only (no wheels, no pip cache). A COPY is cached by its content, so
# a changed tree always gives a new layer (a RUN that bind-mounts the builder's output can
# be served from the cache by buildah with the old code).
COPY --from=builder /install/ /
RUN shipper --version

COPY --chown=root:root --chmod=0644 config/shipper.yaml /etc/shipper/shipper.yaml

# Numeric so Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/shipper
VOLUME ["/var/lib/shipper"]

EXPOSE 9108

# `shipper health` GETs /health on the address the config listens on (metrics.listen, which
# the example config takes from SHIPPER_METRICS_LISTEN; 0.0.0.0 is asked on 127.0.0.1) and
# exits 0 on 200, 1 otherwise. So moving the port moves the check with it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["shipper", "health", "-c", "/etc/shipper/shipper.yaml"]

# SIGTERM starts the stop: reading goes on until the files are idle (shutdown.read_idle),
# then the queue drains (shutdown.drain_timeout); give `docker stop` a longer --time
# (Kubernetes: terminationGracePeriodSeconds) than the two together.
STOPSIGNAL SIGTERM
ENTRYPOINT ["shipper", "run", "-c", "/etc/shipper/shipper.yaml"]

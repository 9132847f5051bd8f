# syntax=docker/dockerfile:1
# shipper: log-shipping sidecar that tails files into Kafka.
#
#   docker build -t shipper .
#   docker run --rm -v /var/log:/var/log:ro -v shipper-state:/var/lib/shipper shipper
#
# Mount the logs to tail read-only, and a volume on /var/lib/shipper so the registry
# (file positions) survives restarts. Mount your own config over /etc/shipper/shipper.yaml.
# The example config listens on $SHIPPER_METRICS_LISTEN (0.0.0.0:9108 in this image).

# ---- builder: wheels for shipper and every dependency --------------------------------
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY shipper ./shipper
# `pip wheel .` builds from the local tree and resolves the version ranges declared in
# pyproject.toml, so there is no bare package name for DL3013 to pin here.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# ---- runtime -------------------------------------------------------------------------
FROM python:3.11-slim-bookworm

# The example config reads these; listen on all interfaces so Prometheus can scrape.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SHIPPER_METRICS_LISTEN=0.0.0.0:9108

# A fixed uid/gid so volume ownership is predictable across hosts and rebuilds.
RUN groupadd --system --gid 10001 shipper \
 && useradd --system --uid 10001 --gid shipper --no-create-home \
        --home-dir /var/lib/shipper --shell /usr/sbin/nologin shipper \
 && install -d -o shipper -g shipper -m 0750 /var/lib/shipper \
 && install -d -m 0755 /etc/shipper

# Install offline from the builder's wheels only; the wheel directory never becomes a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/shipper-*.whl \
 && shipper --version

COPY --chown=root:root --chmod=0644 config/shipper.yaml /etc/shipper/shipper.yaml

# Numeric so Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/shipper
VOLUME ["/var/lib/shipper"]

EXPOSE 9108

# /health answers 200 when healthy and 503 otherwise; urlopen raises on anything but 2xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/health', timeout=4)"]

# SIGTERM starts a drain (shutdown.drain_timeout, 5s by default); give `docker stop`
# a longer --time / stop_grace_period than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["shipper", "run", "-c", "/etc/shipper/shipper.yaml"]

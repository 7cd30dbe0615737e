# Streams server image. Dependencies come from requirements.lock (exact versions
# with hashes, made by scripts/lock from pyproject.toml), in their own layer
# before the code: a code change rebuilds only the last layers, and an image
# built next month has the same versions as one built today.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STREAMS_LISTEN=0.0.0.0:50051 \
    STREAMS_DATA=/var/lib/streams

WORKDIR /app
# The user (numeric, so that Kubernetes' runAsNonRoot can verify it) and the
# locked dependencies: wheels only, every file checked against its hash.
COPY requirements.lock ./
RUN groupadd --system --gid 10001 streams \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/streams --no-create-home streams \
    && mkdir -p /var/lib/streams && chown 10001:10001 /var/lib/streams \
    && python -m venv /app/.venv \
    && /app/.venv/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
        -r requirements.lock
# The code: built and installed with the locked setuptools, fetching nothing.
COPY pyproject.toml README.md /src/
COPY streams/ /src/streams/
RUN /app/.venv/bin/pip install --no-cache-dir --no-index --no-deps --no-build-isolation /src \
    && /app/.venv/bin/pip check \
    && rm -rf /src

USER 10001:10001
VOLUME ["/var/lib/streams"]
EXPOSE 50051
STOPSIGNAL SIGTERM
# The health check reads the server's environment: the port of STREAMS_LISTEN,
# and with STREAMS_TLS_CERT it speaks TLS, trusting that certificate (or
# STREAMS_HEALTHCHECK_CA); under mutual TLS it presents STREAMS_HEALTHCHECK_CERT
# and STREAMS_HEALTHCHECK_KEY. It asks "" (the server serves; reads work).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/app/.venv/bin/python", "-m", "streams.healthcheck"]
# Arguments (docker run IMAGE --flag, Kubernetes `args`) go to the server. It
# writes under STREAMS_DATA, and with --workers above 1 (the default on a
# machine of several cores) its private sockets and port lock under TMPDIR
# (/tmp): with a read-only root filesystem, mount an emptyDir there.
ENTRYPOINT ["/app/.venv/bin/streams-server"]
CMD []

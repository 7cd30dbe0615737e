# Streams server image. It installs with the very code scripts/serve runs
# (scripts/_venv.sh: a venv in .venv, `pip install -e .`), and starts through
# scripts/serve, so running those scripts on a machine tests this image's steps.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STREAMS_LISTEN=0.0.0.0:50051 \
    STREAMS_DATA=/var/lib/streams

WORKDIR /app
COPY pyproject.toml README.md server.py ./
COPY scripts/ scripts/
COPY protos/ protos/
COPY streams/ streams/
RUN bash -c 'source scripts/_venv.sh && ensure_venv' \
    && useradd --system --uid 10001 --home-dir /var/lib/streams streams \
    && mkdir -p /var/lib/streams && chown streams /var/lib/streams

USER streams
VOLUME ["/var/lib/streams"]
EXPOSE 50051
STOPSIGNAL SIGTERM
# The health check reads the server's environment: the port of STREAMS_LISTEN,
# and with STREAMS_TLS_CERT it speaks TLS, trusting that certificate (or
# STREAMS_HEALTHCHECK_CA); under mutual TLS it presents STREAMS_HEALTHCHECK_CERT
# and STREAMS_HEALTHCHECK_KEY. It asks "" (the server serves; reads work).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/app/.venv/bin/python", "-m", "streams.healthcheck"]
# Arguments (docker run IMAGE --flag, Kubernetes `args`) go to the server.
ENTRYPOINT ["scripts/serve"]
CMD []

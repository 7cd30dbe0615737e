# Streams server image. The install steps are the ones scripts/serve runs
# (a venv at /app/.venv, `pip install -e .`), so testing those here tests this.
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
RUN python -m venv /app/.venv \
    && /app/.venv/bin/pip install --no-cache-dir --upgrade pip \
    && /app/.venv/bin/pip install --no-cache-dir -e . \
    && useradd --system --uid 10001 --home-dir /var/lib/streams streams \
    && mkdir -p /var/lib/streams && chown streams /var/lib/streams

USER streams
VOLUME ["/var/lib/streams"]
EXPOSE 50051
STOPSIGNAL SIGTERM
CMD ["/app/.venv/bin/python", "server.py"]

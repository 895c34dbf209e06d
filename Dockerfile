# The taskpoint image: one image for every role, chosen by the command
# (`taskpoint gateway`, `taskpoint worker`, `taskpoint run`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The packages first, the rest of the checkout never: tests, benches and docs
# stay out of the image.
COPY pyproject.toml README.md ./
COPY actors ./actors
COPY store ./store
COPY gateway ./gateway
RUN pip install . \
    && useradd --system --create-home --home-dir /home/taskpoint --uid 10001 taskpoint \
    && mkdir -p /data \
    && chown taskpoint /data

USER taskpoint
# The embedded SQLite store, when no TASKPOINT_STORE_URL is given, lands here.
WORKDIR /data
VOLUME ["/data"]
ENV TASKPOINT_GATEWAY_HOST=0.0.0.0
EXPOSE 8080

ENTRYPOINT ["taskpoint"]
CMD ["run"]

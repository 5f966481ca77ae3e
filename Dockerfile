# The tracker service image. Configure with TRACKER_* environment variables
# (see README); point TRACKER_REDIS_URL at Redis and TRACKER_CLICKHOUSE_DSN at ClickHouse.
FROM python:3.11-slim AS build
# gcc compiles the click core's Cython accelerator (the image has the Python headers)
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY tracker tracker
COPY attribution attribution
COPY geo geo
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 tracker
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config config
ENV TRACKER_CONFIG=/app/config/tracker.toml TRACKER_DATA_DIR=/data \
    TRACKER_CLICKHOUSE_MIGRATIONS_DIR=/app/config/migrations
RUN mkdir /data && chown tracker /data
USER tracker
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"
ENTRYPOINT ["tracker"]
CMD ["serve"]

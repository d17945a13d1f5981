# genro-mail-proxy in a container, started as the original service's quick start was:
#
#   docker build -t genro-mail-proxy .
#   docker run -p 8000:8000 -e GMP_API_TOKEN=your-secret-token \
#     -e GMP_CLIENT_SYNC_URL=https://your-app/proxy_sync \
#     -e GMP_CLIENT_SYNC_USER=syncuser -e GMP_CLIENT_SYNC_PASSWORD=syncpass \
#     -v gmp-data:/data genro-mail-proxy
#
# The API listens on every interface of the container, so GMP_API_TOKEN is required: without
# it the proxy refuses to start, saying so. The queue lives in /data (SQLite) unless
# GMP_DB_PATH names a PostgreSQL database (docker-compose.yml). docs/deployment.md, Containers.
# tests/test_container.py installs the project as this file does and runs its command.

# ---- build: the project and every optional backend, in a virtualenv copied below
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md /src/
COPY gmp_core /src/gmp_core
COPY plugins /src/plugins
RUN python -m venv /opt/gmp \
    && /opt/gmp/bin/pip install "/src[postgresql,s3,http,webdav]"

# ---- run: the virtualenv only, as an unprivileged user
FROM python:3.11-slim
COPY --from=build /opt/gmp /opt/gmp
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin gmp \
    && mkdir /data \
    && chown gmp:gmp /data
ENV PATH=/opt/gmp/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GMP_HOST=0.0.0.0 \
    GMP_PORT=8000 \
    GMP_DB_PATH=/data/mail_service.db
VOLUME /data
WORKDIR /data
USER gmp
EXPOSE 8000
# The slim image has no curl: Python asks /health (no token needed), exit 1 unless 200.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('GMP_PORT', '8000') + '/health', timeout=4)"]
# SIGTERM: stop claiming, finish sends in flight, post what reports it can, exit 0.
STOPSIGNAL SIGTERM
CMD ["gmp", "serve"]

# One image for every process of agentsvc:
#   docker run IMAGE            -> agentsvc serve   (the API on :8000)
#   docker run IMAGE worker     -> agentsvc worker  (a queue worker)
#   docker run IMAGE migrate    -> agentsvc migrate (Alembic upgrade head)
#   docker run IMAGE keys create --user alice --role approver
# Configuration is the AGENTSVC_* environment (see .env.example).

# ---- builder: build agentsvc and its dependencies into a virtualenv -------------------------
FROM python:3.11-slim AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
RUN python -m venv /opt/venv

# Every dependency ships manylinux wheels for CPython 3.11, so no compiler is needed here
# either; the runtime stage receives only /opt/venv. README.md is the package's readme.
COPY pyproject.toml README.md ./
COPY app ./app
RUN /opt/venv/bin/pip install . \
    && /opt/venv/bin/agentsvc --help >/dev/null

# ---- runtime: the virtualenv, a non-root user, nothing else --------------------------------
FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    AGENTSVC_HOST=0.0.0.0 \
    AGENTSVC_PORT=8000 \
    AGENTSVC_DATABASE_URL=sqlite+aiosqlite:////data/agentsvc.db \
    AGENTSVC_SANDBOX_DIR=/sandbox

# /data holds the SQLite default (single-process use); /sandbox is the only folder the file
# tools touch. Both belong to the service user, so named volumes mounted there inherit it.
RUN groupadd --system --gid 10001 agentsvc \
    && useradd --system --uid 10001 --gid agentsvc --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin agentsvc \
    && mkdir -p /data /sandbox \
    && chown agentsvc:agentsvc /data /sandbox

COPY --from=builder /opt/venv /opt/venv

WORKDIR /data
# The agentsvc user, by number so that runtimes can verify it is not root (runAsNonRoot).
USER 10001:10001

EXPOSE 8000

# Liveness of `serve` via GET /healthz (no curl in slim, so python). The same image runs `worker`
# and `migrate`, which serve no HTTP, so the probe runs only when the container's command
# (PID 1's arguments, also under `--init`) is `serve`; otherwise the check passes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; 'serve' in open('/proc/1/cmdline').read().split(chr(0)) and urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('AGENTSVC_PORT', '8000') + '/healthz', timeout=4).close()"]

ENTRYPOINT ["agentsvc"]
CMD ["serve"]

# syntax=docker/dockerfile:1
# Multi-stage: build wheels with the toolchain, run on a slim image as a non-root user.

FROM python:3.11-slim AS build
WORKDIR /build
COPY requirements.txt .
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    WEB_CONCURRENCY=2
WORKDIR /app
# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can verify it, and volume ownership is predictable.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels /wheels/* && rm -rf /wheels
COPY swagger_server ./swagger_server
COPY swagger ./swagger
COPY wsgi.py gunicorn.conf.py config.ini.example pyproject.toml ./
USER 10001:10001
EXPOSE 8080
# Liveness without the database; /api/health/db needs a token and would flap with the database.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/api/health' % os.environ.get('PORT', '8080'), timeout=2)"]
# gunicorn with its config file; the development server is never used in the image.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]

# exolegs: one image for every process; the command picks it
# (`exolegs web`, `exolegs worker`, `exolegs simulate`). See docs/deployment.md.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN useradd --create-home --uid 10001 --user-group exolegs

# The production dependencies (the SQL sink's drivers included), pinned with
# hashes in requirements.lock (`make lock`); no test or lint tool. Their layer
# is reused until the lock changes.
COPY requirements.lock /tmp/
RUN pip install --require-hashes --no-deps -r /tmp/requirements.lock && rm /tmp/requirements.lock

COPY pyproject.toml README.md /tmp/src/
COPY web /tmp/src/web
COPY worker /tmp/src/worker
RUN pip install --no-deps /tmp/src && rm -rf /tmp/src

# ./var under the working directory holds the callback spool (SPOOL_DIR) and the
# default JSONL sink file; mount a volume here to keep them (docker-compose.yml does).
WORKDIR /app
RUN mkdir -p /app/var/spool && chown -R exolegs:exolegs /app
USER exolegs

ENV PORT=8000
EXPOSE 8000
CMD ["exolegs", "web"]

# exolegs: one image for every process; the command picks it
# (`exolegs web`, `exolegs worker`, `exolegs simulate`). See docs/deployment.md.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Extras to install with the package, e.g. `docker build --build-arg EXTRAS=sql .`
# for the SQL sink's drivers. Never `dev`: tests and linters stay out of the image.
ARG EXTRAS=""

RUN useradd --create-home --uid 10001 --user-group exolegs

COPY pyproject.toml README.md /tmp/src/
COPY web /tmp/src/web
COPY worker /tmp/src/worker
RUN pip install "/tmp/src${EXTRAS:+[$EXTRAS]}" && rm -rf /tmp/src

# ./var under the working directory holds the callback spool (SPOOL_DIR) and the
# default JSONL sink file; mount a volume here to keep them (docker-compose.yml does).
WORKDIR /app
RUN mkdir -p /app/var/spool && chown -R exolegs:exolegs /app
USER exolegs

ENV PORT=8000
EXPOSE 8000
CMD ["exolegs", "web"]

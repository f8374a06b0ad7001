# One image for every mirrorq process: worker, listener, API, emulator, CLI.
FROM python:3.11-slim
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY config config
COPY tasks tasks
COPY worker worker
COPY emulator emulator
COPY mirrorq mirrorq
RUN uv sync --frozen --no-dev
ENV PATH=/app/.venv/bin:$PATH
# `mirrorq api` (docker-compose publishes it on 127.0.0.1 only)
EXPOSE 8080
USER nobody
ENTRYPOINT ["mirrorq"]

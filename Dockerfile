# One image for every mirrorq process: worker, emulator, CLI.
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
USER nobody
ENTRYPOINT ["mirrorq"]

#!/usr/bin/env bash
# Everything a fresh machine needs before mirrorq runs: uv, the locked environment, Redis.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet "uv==${UV_VERSION}"
fi
# Bytecode compiled once here: with PYTHONDONTWRITEBYTECODE set (as on CI), every worker and
# CLI process would otherwise compile celery, botocore and redis from source as it starts.
uv sync --frozen --quiet --compile-bytecode

# The dashboard's browser tests (tests/test_dashboard.py) drive Debian's headless Chromium
# through its chromedriver; nothing is downloaded at test time.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
fi

redis_url="${MIRRORQ_BROKER_URL:-redis://127.0.0.1:6379/0}"
if ! uv run --frozen python - "$redis_url" <<'PY' >/dev/null 2>&1
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
PY
then
  if ! command -v redis-server >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  fi
  mkdir -p /var/lib/redis /var/log/redis
  # Loopback only, with an append-only file fsynced every second: the queue, unacked
  # messages, records, leases and batches survive a restart (README, "What survives").
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly yes --appendfsync everysec --dir /var/lib/redis \
    --logfile /var/log/redis/mirrorq.log
  for _ in $(seq 50); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

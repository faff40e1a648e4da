#!/usr/bin/env bash
# End-to-end checks of `chatglm serve` with real clients, loopback only:
#   1. installs the tools: Debian's chromium (apt), playwright-core (npm ci, pinned by the lock
#      file next to this script), the `openai` Python package (pinned, in a venv under target/e2e);
#   2. builds `chatglm` and starts `chatglm serve --test-engine` (the hidden flag that serves the
#      deterministic echo engine instead of a model) on a free loopback port;
#   3. runs openai_client.py (non-streaming and streaming completions through the official client)
#      and page_test.mjs (types a question in the page, sees the streamed answer, clears history);
#   4. sends SIGTERM and checks the server exits cleanly.
# Artifacts (screenshot, server log) go to target/e2e/ (or $E2E_OUT). Exits non-zero on failure.
# Set E2E_SKIP_INSTALL=1 to reuse tools already installed, CHROMIUM=/path to pick the browser,
# CHATGLM_BIN=/path to use a chatglm binary already built.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
OUT=${E2E_OUT:-$ROOT/target/e2e}
OPENAI_VERSION=3.57.0
mkdir -p "$OUT"

log() { printf '\n== %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) for: $*" >&2; return 1; fi
}

if [ "${E2E_SKIP_INSTALL:-0}" != 1 ]; then
  log "installing chromium, playwright-core, openai==$OPENAI_VERSION"
  if ! command -v chromium >/dev/null && [ -z "${CHROMIUM:-}" ]; then
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
  fi
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
  [ -x "$OUT/venv/bin/python" ] || python3 -m venv "$OUT/venv"
  "$OUT/venv/bin/pip" install -q "openai==$OPENAI_VERSION"
fi
CHROMIUM=${CHROMIUM:-$(command -v chromium)}
PYTHON="$OUT/venv/bin/python"

if [ -n "${CHATGLM_BIN:-}" ]; then
  BIN=$CHATGLM_BIN
else
  log "building chatglm"
  (cd "$ROOT" && cargo build -q -p chatglm-cli)
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/chatglm"
fi

log "starting chatglm serve --test-engine"
rm -rf "$OUT/data"
"$BIN" serve --test-engine --test-engine-delay-ms 20 --prefix demo-upper=unused \
  --port 0 --data-dir "$OUT/data" >"$OUT/server.log" 2>&1 &
SERVER=$!
cleanup() { kill "$SERVER" 2>/dev/null || true; }
trap cleanup EXIT
URL=
for _ in $(seq 1 100); do
  URL=$(grep -o 'listening on http://[0-9.:]*' "$OUT/server.log" | head -1 | sed 's/listening on //') || true
  [ -n "$URL" ] && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$OUT/server.log"; echo "server exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$URL" ] || { cat "$OUT/server.log"; echo "server did not start" >&2; exit 1; }
echo "server at $URL"

log "openai Python client"
"$PYTHON" "$HERE/openai_client.py" "$URL"

log "page test in $CHROMIUM"
node "$HERE/page_test.mjs" "$URL" "$CHROMIUM" "$OUT/page.png"

log "SIGTERM drains and exits"
kill -TERM "$SERVER"
status=0
wait "$SERVER" || status=$?
trap - EXIT
[ "$status" = 0 ] || { cat "$OUT/server.log"; echo "server exited with $status after SIGTERM" >&2; exit 1; }
echo "ok: clean exit"

log "all end-to-end checks passed (screenshot: $OUT/page.png)"

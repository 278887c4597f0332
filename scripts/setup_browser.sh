#!/usr/bin/env bash
# Installs what the browser test of the chat page needs (scripts/browser/chat_page_test.mjs):
#   - Debian's chromium at /usr/bin/chromium (apt-get, only when missing);
#   - playwright-core (pinned in scripts/browser/package.json) into
#     scripts/browser/node_modules via `npm ci` (or `npm install` without a lock).
# playwright-core never downloads a browser; the test drives the system chromium.
# Idempotent; quiet on success (one line); exits non-zero with a reason on failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
BROWSER_DIR="$HERE/browser"
CHROMIUM=/usr/bin/chromium

die() { echo "setup_browser.sh: $*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

if [[ ! -x "$CHROMIUM" ]]; then
    command -v apt-get >/dev/null 2>&1 || die "$CHROMIUM is missing and apt-get is not available"
    SUDO=""
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "$CHROMIUM is missing and installing it needs root"
        SUDO="sudo"
    fi
    log="$(mktemp)"
    if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium; } >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        rm -f "$log"
        die "apt-get install chromium failed"
    fi
    rm -f "$log"
    [[ -x "$CHROMIUM" ]] || die "chromium installed but $CHROMIUM is not there"
fi

command -v node >/dev/null 2>&1 || die "node is missing (apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 || die "npm is missing (apt-get install npm)"

want="$(node -e 'console.log(require(process.argv[1]).dependencies["playwright-core"])' "$BROWSER_DIR/package.json")" \
    || die "cannot read $BROWSER_DIR/package.json"
have=""
if [[ -f "$BROWSER_DIR/node_modules/playwright-core/package.json" ]]; then
    have="$(node -e 'console.log(require(process.argv[1]).version)' "$BROWSER_DIR/node_modules/playwright-core/package.json" 2>/dev/null || true)"
fi
if [[ "$have" != "$want" ]]; then
    log="$(mktemp)"
    if [[ -f "$BROWSER_DIR/package-lock.json" ]]; then
        cmd=(npm ci)
    else
        cmd=(npm install)
    fi
    if ! (cd "$BROWSER_DIR" && "${cmd[@]}" --no-audit --no-fund --loglevel=error) >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        rm -f "$log"
        die "${cmd[*]} in $BROWSER_DIR failed"
    fi
    rm -f "$log"
fi

echo "browser ready: $("$CHROMIUM" --version 2>/dev/null | head -n1 || echo chromium), playwright-core $want"

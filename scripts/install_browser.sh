#!/usr/bin/env bash
# The browser the viewer tests drive: Debian's (or Ubuntu's) chromium package, through Playwright
# for Python (which cannot download its own browsers here; never run `playwright install`).
# Installs it when missing (as root, or with sudo when it needs no password); `make test` runs this.
# Prints the browser's path. THREEGEN_CHROMIUM names another Chromium instead.
set -euo pipefail

for candidate in "${THREEGEN_CHROMIUM:-}" /usr/bin/chromium "$(command -v chromium || true)" \
                 "$(command -v chromium-browser || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then
    echo "$candidate"
    exit 0
  fi
done

if ! command -v apt-get >/dev/null; then
  echo "install_browser: no Chromium and no apt-get: install Chromium, or set THREEGEN_CHROMIUM" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "install_browser: Chromium is missing; install it as root: apt-get install -y chromium" >&2
  exit 1
fi
echo "install_browser: installing Debian's chromium package (the viewer's browser tests need it)" >&2
"${as_root[@]}" apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium >&2
echo /usr/bin/chromium

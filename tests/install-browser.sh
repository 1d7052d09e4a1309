#!/usr/bin/env bash
# Installs headless Chromium and its WebDriver from the system's packages (Debian: chromium, chromium-driver)
# when they are missing, for the dashboard's browser test (tests/test_dashboard_browser.py). Run by tox before the
# unit tests. Fails loudly when it cannot: the browser test is never skipped.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo -n)
else
    echo "install-browser: need ${missing[*]} (the dashboard's browser test); run as root or install them" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: need ${missing[*]} at /usr/bin and know only apt-get; install them yourself" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" apt-get install -y -q "${missing[@]}" >/dev/null; }
for path in /usr/bin/chromium /usr/bin/chromedriver; do
    [ -x "$path" ] || { echo "install-browser: installed ${missing[*]}, but $path is not there" >&2; exit 1; }
done
echo "install-browser: installed ${missing[*]}"

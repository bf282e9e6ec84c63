#!/usr/bin/env bash
# Installs Chromium (Debian package chromium) for the web viewer's test (tests/test_viewer.py drives it headless).
# Does nothing when a Chromium is already on the PATH (or MEDTEXTSEG_CHROMIUM names one).
set -euo pipefail
for name in "${MEDTEXTSEG_CHROMIUM:-}" chromium chromium-browser google-chrome; do
  [ -n "$name" ] && command -v "$name" >/dev/null 2>&1 && exit 0
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup_browser.sh: Chromium is missing and apt-get is not available; install Chromium by hand" \
       "(or set MEDTEXTSEG_CHROMIUM); the viewer's test is skipped without it" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "setup_browser.sh: Chromium is missing; installing it needs root (run as root or install sudo)" >&2
  exit 1
fi
echo "setup_browser.sh: installing chromium (headless browser for the web viewer's test)" >&2
if ! { "${SUDO[@]}" apt-get update -qq && \
       DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium; }; then
  echo "setup_browser.sh: apt-get could not install chromium (needed by tests/test_viewer.py)" >&2
  exit 1
fi

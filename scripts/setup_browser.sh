#!/usr/bin/env bash
# Installs Chromium (Debian package chromium) for the web viewer's test (tests/test_viewer.py drives it headless).
# Does nothing when a Chromium is already on the PATH (or MEDTEXTSEG_CHROMIUM names one).
set -euo pipefail
for name in "${MEDTEXTSEG_CHROMIUM:-}" chromium chromium-browser google-chrome; do
  [ -n "$name" ] && command -v "$name" >/dev/null 2>&1 && exit 0
done
bash "$(dirname "$0")/apt_install.sh" setup_browser.sh chromium "headless browser for the web viewer's test"

#!/usr/bin/env bash
# Builds the web viewer's JavaScript: `npm ci` in viewer/ (NiiVue, pinned by viewer/package-lock.json), then copies
# NiiVue's self-contained bundle into src/medtextseg/server/static/, which `medtextseg serve` serves at /.
# Nothing is fetched at run time. Does nothing when the bundle of the locked version is already there.
# --optional: when npm is missing, warn and exit 0 (the server then serves a page saying how to build the viewer).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/.."
OPTIONAL=0
[ "${1:-}" = "--optional" ] && OPTIONAL=1
STATIC=src/medtextseg/server/static
BUNDLE=$STATIC/niivue.umd.js
STAMP=$STATIC/.niivue-version
VERSION=$(python3 -c 'import json; print(json.load(open("viewer/package-lock.json"))["packages"]["node_modules/@niivue/niivue"]["version"])')
[ -f "$BUNDLE" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ] && exit 0
if ! command -v npm >/dev/null 2>&1; then
  if [ "$OPTIONAL" = 1 ]; then
    echo "setup_viewer.sh: npm is not installed; the web viewer (medtextseg serve, GET /) is not built." \
         "Install Node.js + npm and run: bash scripts/setup_viewer.sh" >&2
    exit 0
  fi
  bash "$HERE/apt_install.sh" setup_viewer.sh npm "Node.js + npm, to build the web viewer"
fi
echo "setup_viewer.sh: building the web viewer (NiiVue $VERSION)" >&2
npm ci --prefix viewer --no-audit --no-fund --ignore-scripts --loglevel=error
mkdir -p "$STATIC"
cp viewer/node_modules/@niivue/niivue/dist/niivue.umd.js "$BUNDLE.tmp"
mv "$BUNDLE.tmp" "$BUNDLE"
echo "$VERSION" > "$STAMP"

#!/usr/bin/env bash
# Builds the web viewer's JavaScript: `npm ci` in viewer/ (NiiVue, pinned by viewer/package-lock.json), then copies
# NiiVue's self-contained bundle into src/medtextseg/server/static/, which `medtextseg serve` serves at /.
# Nothing is fetched at run time. Does nothing when the bundle of the locked version is already there.
# --optional: when npm is missing, warn and exit 0 (the server then serves a page saying how to build the viewer).
set -euo pipefail
cd "$(dirname "$0")/.."
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
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1; }; then
    SUDO=(); [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
    echo "setup_viewer.sh: installing npm (Debian package) to build the web viewer" >&2
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends npm
  else
    echo "setup_viewer.sh: npm is missing; install Node.js + npm (https://nodejs.org) and rerun" >&2
    exit 1
  fi
fi
echo "setup_viewer.sh: building the web viewer (NiiVue $VERSION)" >&2
npm ci --prefix viewer --no-audit --no-fund --ignore-scripts --loglevel=error
mkdir -p "$STATIC"
cp viewer/node_modules/@niivue/niivue/dist/niivue.umd.js "$BUNDLE.tmp"
mv "$BUNDLE.tmp" "$BUNDLE"
echo "$VERSION" > "$STAMP"

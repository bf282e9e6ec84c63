#!/usr/bin/env bash
# Installs the Colin27 T1 brain + AAL atlas (Debian package mricron-data) under /usr/share/mricron/templates,
# used by the aal converter (`medtextseg convert aal`) and its tests. Does nothing when already installed.
set -euo pipefail
ATLAS=/usr/share/mricron/templates/aal.nii.gz
[ -f "$ATLAS" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup_atlas.sh: $ATLAS is missing and apt-get is not available; install the Debian package mricron-data by hand" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "setup_atlas.sh: $ATLAS is missing; installing mricron-data needs root (run as root or install sudo)" >&2
  exit 1
fi
echo "setup_atlas.sh: installing mricron-data (Colin27 T1 + AAL atlas)" >&2
if ! { "${SUDO[@]}" apt-get update -qq && \
       DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends mricron-data; }; then
  echo "setup_atlas.sh: apt-get could not install mricron-data (Colin27 + AAL atlas, needed by the tests)" >&2
  exit 1
fi
if [ ! -f "$ATLAS" ]; then
  echo "setup_atlas.sh: mricron-data is installed but $ATLAS is missing" >&2
  exit 1
fi

#!/usr/bin/env bash
# Installs the Colin27 T1 brain + AAL atlas (Debian package mricron-data) under /usr/share/mricron/templates,
# used by the aal converter (`medtextseg convert aal`) and its tests. Does nothing when already installed.
set -euo pipefail
ATLAS=/usr/share/mricron/templates/aal.nii.gz
[ -f "$ATLAS" ] && exit 0
bash "$(dirname "$0")/apt_install.sh" setup_atlas.sh mricron-data "Colin27 T1 + AAL atlas, needed by the tests"
if [ ! -f "$ATLAS" ]; then
  echo "setup_atlas.sh: mricron-data is installed but $ATLAS is missing" >&2
  exit 1
fi

#!/usr/bin/env bash
# apt_install.sh CALLER PACKAGE PURPOSE: installs one Debian package with apt-get (as root, or through sudo),
# for the project's setup scripts; one line on stderr and exit 1 when it cannot.
set -euo pipefail
caller=$1 package=$2 purpose=$3
if ! command -v apt-get >/dev/null 2>&1; then
  echo "$caller: $package is missing and apt-get is not available; install the Debian package $package by hand ($purpose)" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "$caller: $package is missing; installing it needs root (run as root or install sudo)" >&2
  exit 1
fi
echo "$caller: installing $package ($purpose)" >&2
if ! { "${SUDO[@]}" apt-get update -qq && \
       DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$package"; }; then
  echo "$caller: apt-get could not install $package ($purpose)" >&2
  exit 1
fi

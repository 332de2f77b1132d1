#!/usr/bin/env bash
# Builds and runs `sbc`. Without arguments: the embedded demo on loopback (open
# the printed URL, go online, dial the echo number). With `--config FILE`: a
# deployment. On a fresh Debian machine it first installs what the build needs
# (cmake, make, g++; as root, with apt-get), once.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cmake >/dev/null || need+=(cmake)   # libopus is built by cmake
command -v make >/dev/null || need+=(make)
command -v c++ >/dev/null || need+=(g++)
command -v cc >/dev/null || need+=(gcc)
if ((${#need[@]})); then
  echo "sbc: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo build --release --locked -p sbc
exec ./target/release/sbc "$@"

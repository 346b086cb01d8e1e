#!/usr/bin/env bash
# Debian packages for the loopback device peers the test suite starts (tests/support):
#   openssh-server - a throw-away sshd on 127.0.0.1 drives the SSH transport end to end;
#   adb            - the real adb client/server talks to tests/support/adb_peer.py (Debian has no adbd);
#   chromium       - headless, renders report.html in tests/test_report.py (tables and embedded plots).
#   dataset-fashion-mnist - /usr/share/datasets/fashion-mnist for benchmarks/bench_prune.py.
# Idempotent: installs only what is missing. Without root (or without apt-get) it says what to
# install by hand and exits 0, so a developer machine is never half-configured by surprise.
set -euo pipefail

packages=(openssh-server adb chromium dataset-fashion-mnist)
missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages already installed: ${packages[*]}"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "skipping: need root and apt-get to install ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have an empty package index; refresh it only when a package is missing.
apt-get update -qq
# --no-install-recommends keeps sshd from pulling in extras; the package's own postinst would start
# a system sshd on port 22 under systemd, which the tests neither need nor use (they run their own).
apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "installed: ${missing[*]}"

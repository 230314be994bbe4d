#!/usr/bin/env bash
# Installs the Debian packages wg-kube's tests and demo need, when any is missing.
# Idempotent; needs root and apt-get (Debian or Ubuntu).
set -euo pipefail
packages=(qemu-system-x86 linux-image-amd64 wireguard-tools wireguard-go iproute2 iputils-ping kmod busybox-static python3-venv openssl systemd prometheus nftables strace)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "wg-kube needs these Debian packages: ${missing[*]} (run as root on Debian/Ubuntu, or install them)" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"

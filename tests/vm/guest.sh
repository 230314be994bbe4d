#!/bin/bash
# Runs inside the VM (see run.sh): load WireGuard, then pytest -m kernel over the checkout.
# Usage: guest.sh RESULT_DIR [pytest args...]
set -u
RESULT=$1
shift
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 3
cut -d' ' -f1 /proc/uptime >"$RESULT/uptime"
touch "$RESULT/started"
modprobe wireguard || { echo "guest: modprobe wireguard failed" >&2; exit 3; }
# Loaded up front rather than on first use: the VXLAN test (tests/router) and the
# nftables faults (tests/ha, tests/observe) then fail on their own, not on a module.
for module in vxlan nf_tables; do
  modprobe "$module" || echo "guest: modprobe $module failed" >&2
done
export PYTHONDONTWRITEBYTECODE=1 WGKUBE_IN_VM=1
# The standard library and the venv's packages, archived by run.sh, into RAM and
# mounted over their own paths (only in this guest's mount table): Python then starts
# from tmpfs, not over 9p. What the archives leave out is linked back to the 9p copy.
# On any failure the suite runs from 9p as before, only slower.
runtime_in_ram() {
  local ram=/tmp/wgkube-runtime name path entry started=$SECONDS
  mkdir -p "$ram" && mount -t tmpfs -o mode=0755 wgkube-runtime "$ram" || return 1
  while IFS=$'\t' read -r name path; do
    mkdir -p "$ram/9p/$name" "$ram/$name" || return 1
    mount --bind "$path" "$ram/9p/$name" || return 1
    tar -xf "$RESULT/$name.tar" -C "$ram/$name" || return 1
    for entry in "$ram/9p/$name"/* "$ram/9p/$name"/.[!.]*; do
      [[ -e "$entry" && ! -e "$ram/$name/${entry##*/}" ]] && ln -s "$entry" "$ram/$name/${entry##*/}"
    done
    mount --bind "$ram/$name" "$path" || return 1
  done <"$RESULT/runtime"
  echo "guest: Python runtime in RAM ($(df -m --output=used "$ram" | tail -n 1 | tr -d " ") MB) in $((SECONDS - started)) s" >&2
}
if [[ -f "$RESULT/runtime" ]]; then
  runtime_in_ram || echo "guest: could not put the Python runtime in RAM; running it over 9p" >&2
fi
# What run.sh passes on (WGKUBE_CONTROLPLANE_BIN, CI), as a file.
if [[ -f "$RESULT/env" ]]; then
  # shellcheck source=/dev/null
  source "$RESULT/env"
fi
if [[ -f "$RESULT/cmd" ]]; then
  exec bash "$RESULT/cmd"
fi
# addopts is emptied: the host's default deselects `kernel`; here only `kernel` runs.
# Files of a test (logs of the processes it starts) go to the checkout, so that they
# survive the VM: .cache/vm-pytest/ holds the last run's.
exec .venv/bin/python -m pytest -m kernel -o addopts="" -p no:cacheprovider -rs --durations=8 \
  --basetemp=.cache/vm-pytest --junitxml="$RESULT/junit.xml" "${@:-tests}"

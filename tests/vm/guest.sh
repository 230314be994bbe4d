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

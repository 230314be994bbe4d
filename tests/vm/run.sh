#!/usr/bin/env bash
# Run every `kernel` test inside one TCG VM booted with Debian's kernel (virtme-ng).
#
# Usage: tests/vm/run.sh [pytest args...]      (default: the whole `tests` tree, -m kernel)
#        WGKUBE_VM_CMD='...' tests/vm/run.sh   (run a shell command in the guest instead)
#
# KVM hangs on this host, so the guest is emulated (TCG). Measured on this 2-core host
# (shared with other builds, load 4-9): the guest reaches its first command 23-40 s
# after boot; the kernel suite (30 tests of tests/kernel, plus collecting the whole
# tree) took 197-434 s inside, 283-561 s wall clock for the whole run. The kernel
# variants of the system tests on the real control plane and of monitoring and
# failover (tests/trust, tests/observe, tests/ha, tests/system) take 100-300 s each, and
# the Cilium path's three (tests/router, control plane in the guest) ~10-17 min, most of
# it the wg-kube processes starting in the emulated guest (about a minute each since
# kubernetes-asyncio's generated modules are deferred: wgkube.kube.lean). The whole
# suite, 52 kernel tests: 1995 s wall clock on a quiet host (49 tests without the
# Cilium path took 2019 s before the deferred imports).
# The kernel is booted once for the whole suite; the checkout is shared read-write
# over 9p so the venv runs as is and the results come back.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VNG=${VNG:-$ROOT/.venv/bin/vng}
# vng runs its helpers (virtme-run, virtme-init) from PATH.
export PATH="$ROOT/.venv/bin:$PATH"
# 60 min: the whole suite took ~35 min on this host under load; CI allows 90 for everything.
TIMEOUT=${WGKUBE_VM_TIMEOUT:-3600}
MEMORY=${WGKUBE_VM_MEMORY:-2G}

die() { echo "tests/vm/run.sh: $*" >&2; exit 2; }

# Not the -cloud- flavour: it lacks 9p.
KERNEL=${WGKUBE_VM_KERNEL:-$(find /boot -maxdepth 1 -name 'vmlinuz-*-amd64' ! -name '*-cloud-*' | sort -V | tail -n 1)}
[[ -n "$KERNEL" && -r "$KERNEL" ]] \
  || die "no readable /boot/vmlinuz-*-amd64; run scripts/setup-system.sh (linux-image-amd64)"
[[ -x "$VNG" ]] || die "$VNG not found; run make setup (virtme-ng)"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (qemu-system-x86)"

# The guest writes its verdict here; a missing file means the VM never ran the tests.
mkdir -p "$ROOT/.cache"
RESULT=$(mktemp -d "$ROOT/.cache/vm-XXXXXX")
trap 'rm -rf "$RESULT"' EXIT
# The environment does not cross into the guest; a command does, as a file, and so do
# the few variables tests read: where the control plane binaries are (a worktree without
# its own .cache/controlplane/bin names another's), and CI=true, under which a test that
# needs the real control plane fails instead of skipping without it.
[[ -n "${WGKUBE_VM_CMD:-}" ]] && printf '%s\n' "$WGKUBE_VM_CMD" >"$RESULT/cmd"
for name in WGKUBE_CONTROLPLANE_BIN CI; do
  if [[ -n "${!name:-}" ]]; then printf 'export %s=%q\n' "$name" "${!name}" >>"$RESULT/env"; fi
done

echo "tests/vm/run.sh: booting $KERNEL (TCG, timeout ${TIMEOUT}s)"
start=$(date +%s%N)
set +e
# The command goes in a script file: vng passes it on the kernel command line (~2 KiB).
# Piped through cat: qemu writing straight to a file can lose lines.
timeout --kill-after=10 "$TIMEOUT" "$VNG" --run "$KERNEL" --disable-kvm --force-9p \
  --rwdir="$ROOT" --cwd "$ROOT" --cpus 2 --memory "$MEMORY" \
  -- "$ROOT/tests/vm/guest.sh $RESULT $*" </dev/null 2>&1 | cat
status=${PIPESTATUS[0]}
set -e
elapsed=$(( ($(date +%s%N) - start) / 100000000 ))
echo "tests/vm/run.sh: VM exited with $status after $((elapsed / 10)).$((elapsed % 10)) s" \
  "(guest reached its first command at $(cat "$RESULT/uptime" 2>/dev/null || echo '?') s of uptime)"

[[ $status -eq 124 || $status -eq 137 ]] && die "timed out after ${TIMEOUT}s"
[[ -f "$RESULT/started" ]] || die "the VM did not boot or never ran the guest script (exit $status)"
[[ $status -eq 0 ]] || exit "$status"
if [[ -z "${WGKUBE_VM_CMD:-}" ]]; then
  # Kernel tests skip themselves without the module; inside the VM that would be a
  # silent pass, so a run that executed none of them fails.
  "$ROOT/.venv/bin/python" - "$RESULT/junit.xml" <<'PY' || exit 3
import sys
import xml.etree.ElementTree as ET

try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError) as exc:
    sys.exit(f"tests/vm/run.sh: no pytest report from the guest: {exc}")
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
tests = sum(int(s.get("tests", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
print(f"tests/vm/run.sh: {tests} kernel tests collected, {skipped} skipped")
if tests == 0 or skipped >= tests:
    sys.exit("tests/vm/run.sh: FAIL: the VM ran no kernel test (0 collected or all skipped)")
PY
fi

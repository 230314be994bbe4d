#!/usr/bin/env bash
# Run every `kernel` test inside one TCG VM booted with Debian's kernel (virtme-ng).
#
# Usage: tests/vm/run.sh [pytest args...]      (default: the whole `tests` tree, -m kernel)
#        WGKUBE_VM_CMD='...' tests/vm/run.sh   (run a shell command in the guest instead)
#
# KVM hangs on this host, so the guest is emulated (TCG). Measured on this 2-core host:
# the guest reaches its first command 16-40 s after boot; unpacking the Python runtime
# into RAM (prepare_runtime below) takes 14-20 s of it. The whole suite took 985 s wall
# clock (52 tests) and 1242 s (53 tests, a slower host: its netlink batching test too took
# 7.4 s instead of 5.7 s); 1995 s with Python over 9p. Slowest:
# the Cilium path's three (tests/router, control plane in the guest, 4-6 min together),
# failover (85-133 s), the system tests on the real control plane and monitoring (40-110 s).
# The kernel is booted once for the whole suite; the checkout is shared read-write
# over 9p so the venv runs as is and the results come back.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VNG=${VNG:-$ROOT/.venv/bin/vng}
# vng runs its helpers (virtme-run, virtme-init) from PATH.
export PATH="$ROOT/.venv/bin:$PATH"
# 60 min: the whole suite took ~35 min under load before the runtime went into RAM; CI allows 90.
TIMEOUT=${WGKUBE_VM_TIMEOUT:-3600}
# 3G: the runtime unpacked into RAM takes ~180 MB of it (guest.sh).
MEMORY=${WGKUBE_VM_MEMORY:-3G}

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

# Python start-up dominates the suite in the emulated guest: over 9p, `import
# wgkube.operator.main` took 65-95 s (sys 30 s of it in the 9p client), and every
# module of the checkout was compiled anew (the guest writes no bytecode). So the
# checkout's bytecode is written here, pytest's rewritten test modules included (it
# reads them even when it may not write them), and the interpreter's standard library
# and the venv's packages go into the guest as two archives that guest.sh unpacks into
# RAM (one sequential 9p read, 14-20 s) and mounts over their own paths: 24 s.
prepare_runtime() {
  local py=$ROOT/.venv/bin/python stdlib purelib
  PYTHONDONTWRITEBYTECODE='' "$py" -m compileall -q -j 0 "$ROOT/wgkube" "$ROOT/tests" "$ROOT/bench" >/dev/null \
    || echo "tests/vm/run.sh: compileall failed; the guest compiles what it imports" >&2
  (cd "$ROOT" && PYTHONDONTWRITEBYTECODE='' "$py" -m pytest --collect-only -q -m kernel \
    -o addopts="" -p no:cacheprovider tests >/dev/null 2>&1) \
    || echo "tests/vm/run.sh: collecting on the host failed; the guest rewrites the test modules" >&2
  stdlib=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])') || return 1
  purelib=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
  # Left on 9p (guest.sh links them): what no test imports, and optimised bytecode.
  tar -cf "$RESULT/stdlib.tar" -C "$stdlib" --exclude='*.opt-[12].pyc' --exclude=./test \
    --exclude=./site-packages --exclude='./config-*' --exclude=./idlelib --exclude=./tkinter \
    --exclude=./lib2to3 --exclude=./ensurepip . || return 1
  tar -cf "$RESULT/purelib.tar" -C "$purelib" --exclude='*.opt-[12].pyc' \
    --exclude=./kubernetes_validate --exclude='./*__mypyc*' --exclude=./mypy --exclude=./mypyc \
    --exclude=./pip --exclude=./setuptools --exclude=./grimp . || return 1
  # Written last: the guest takes the archives only when this file is there.
  printf '%s\t%s\n' stdlib "$stdlib" purelib "$purelib" >"$RESULT/runtime"
}
if ! prepare_runtime; then
  echo "tests/vm/run.sh: could not archive the Python runtime; the guest runs it over 9p" >&2
  rm -f "$RESULT/runtime" "$RESULT/stdlib.tar" "$RESULT/purelib.tar"
fi

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

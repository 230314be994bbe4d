#!/usr/bin/env bash
# Build etcd, kube-apiserver and kubectl from their upstream Go modules (pinned
# in go.mod/go.sum next to this script) into $OUT (default:
# <repo>/.cache/controlplane/bin). A no-op when the binaries are current.
# Prints how long it took.
#
# Environment:
#   OUT            output directory (default: <repo>/.cache/controlplane/bin)
#   GO             go command (default: go on PATH, else /usr/local/go/bin/go)
#   NICE           priority prefix for the compiler (default: "nice -n 15")
#   FORCE=1        ignore the up-to-date stamp (go's own caches still apply)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
OUT=${OUT:-$repo/.cache/controlplane/bin}
NICE=${NICE-nice -n 15}
if [[ -z "${GO:-}" ]]; then
  GO=$(command -v go || true)
  GO=${GO:-/usr/local/go/bin/go}
fi
start=$(date +%s%N)
elapsed() { local ds=$(( ($(date +%s%N) - start) / 100000000 )); printf '%d.%d' $((ds / 10)) $((ds % 10)); }

# Use exactly the installed Go (no toolchain download), resolve modules
# through the configured GOPROXY, build static binaries like upstream does;
# no VCS stamping (the checkout's git state says nothing about these binaries).
export GOTOOLCHAIN=local GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0

if ! "$GO" version >/dev/null 2>&1; then
  echo "controlplane: Go is needed (go.mod asks for go 1.26); install it or set GO=/path/to/go" >&2
  exit 2
fi

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9  # concurrent `make controlplane` runs in one checkout wait here

bins=(etcd kube-apiserver kubectl)
stamp=$(
  cd "$here"
  {
    "$GO" version
    "$GO" env GOOS GOARCH
    sha256sum go.mod go.sum build.sh cmd/etcd/main.go
  } | sha256sum | cut -d' ' -f1
)
current=1
for b in "${bins[@]}"; do [[ -x "$OUT/$b" ]] || current=0; done
if [[ "${FORCE:-0}" != 1 && $current == 1 && "$(cat "$OUT/.stamp" 2>/dev/null)" == "$stamp" ]]; then
  echo "controlplane: up to date in $OUT ($(elapsed)s)"
  exit 0
fi

cd "$here"
kube_version=$("$GO" list -m -f '{{.Version}}' k8s.io/kubernetes)  # v1.37.2
kube_time=$("$GO" list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)
etcd_version=$("$GO" list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
IFS=. read -r major minor _ <<<"${kube_version#v}"

# What hack/lib/version.sh would stamp (no git commit: built from the module
# zip, not a git tree); without these the binaries report v0.0.0-master and
# kubectl's version-skew checks misfire.
ldflags=()
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=(
    "-X '$pkg.gitVersion=$kube_version'"
    "-X '$pkg.gitMajor=$major'"
    "-X '$pkg.gitMinor=$minor'"
    "-X '$pkg.gitTreeState=clean'"
    "-X '$pkg.buildDate=$kube_time'"
  )
done
ldflags+=("-X 'go.etcd.io/etcd/api/v3/version.GitSHA=$etcd_version'" -s -w)

echo "controlplane: building kube-apiserver/kubectl $kube_version, etcd $etcd_version with $("$GO" version | cut -d' ' -f3) into $OUT"
tmp=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Same tags/flags as upstream non-debug release builds (hack/lib/golang.sh).
# One invocation so the shared packages are compiled once, in parallel.
# Build into $tmp then rename, so a running test keeps its binary intact.
for b in "${bins[@]}"; do [[ -e "$OUT/$b" ]] && cp -p "$OUT/$b" "$tmp/$b"; done
# shellcheck disable=SC2086
$NICE "$GO" build -trimpath -tags selinux,notest,grpcnotrace \
  -ldflags "all=${ldflags[*]}" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl ./cmd/etcd
for b in "${bins[@]}"; do mv -f "$tmp/$b" "$OUT/$b"; done
echo "$stamp" >"$OUT/.stamp"
echo "controlplane: built $(cd "$OUT" && du -sh "${bins[@]}" | tr '\t\n' ': ' ) in $(elapsed)s"

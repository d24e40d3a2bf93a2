#!/usr/bin/env bash
# Installs the Debian package from `make package` into a scratch root
# (dpkg -x: no root privileges, nothing touches the system) and checks
# that it holds what it should and that the installed programs run:
# `cmqd --version`, and cmqd started with the packaged configuration.
set -euo pipefail
cd "$(dirname "$0")/.."

deb=$(ls -t target/debian/cmq_*.deb 2>/dev/null | head -n 1 || true)
[[ -n "$deb" ]] || { echo "package-test: no target/debian/cmq_*.deb (run make package)" >&2; exit 1; }
root=$(mktemp -d)
pid=
cleanup() {
    [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
    rm -rf "$root"
}
trap cleanup EXIT

dpkg-deb --field "$deb" Package | grep -qx cmq
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/cmq/cmqd.toml
dpkg -x "$deb" "$root"
for f in usr/bin/cmqd usr/bin/cmq usr/bin/cmq-loadgen lib/systemd/system/cmqd.service etc/cmq/cmqd.toml \
    usr/share/cmq/prometheus/alerts.yml usr/share/cmq/grafana/cmq-dashboard.json \
    usr/share/doc/cmq/cmqd.txt usr/share/doc/cmq/OPERATIONS.md; do
    [[ -e "$root/$f" ]] || { echo "package-test: $f is not in the package" >&2; exit 1; }
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
"$root/usr/bin/cmqd" --version | grep -qx "cmqd $version"
"$root/usr/bin/cmq" --version >/dev/null
"$root/usr/bin/cmq-loadgen" --help >/dev/null

# The packaged config starts a broker (ports and data moved to scratch).
"$root/usr/bin/cmqd" --config "$root/etc/cmq/cmqd.toml" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
    --data-dir "$root/data" >"$root/stdout" 2>"$root/stderr" &
pid=$!
for _ in $(seq 200); do
    grep -q '^cmqd listening on ' "$root/stdout" && break
    kill -0 "$pid" 2>/dev/null || { cat "$root/stderr" >&2; exit 1; }
    sleep 0.05
done
grep -q '^cmqd listening on ' "$root/stdout" || { echo "package-test: cmqd did not start" >&2; exit 1; }
kill -TERM "$pid"
wait "$pid"
pid=
echo "package-test: $deb installs and runs (cmqd $version)"

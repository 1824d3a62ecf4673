#!/usr/bin/env bash
# Installs the relay on this host: builds it, installs the binary, the systemd unit, the
# configuration (unless one exists), the sysctls and the docs, and creates the pin directory.
#
#   deploy/install.sh [--dry-run] [--no-build] [--binary PATH] [--destdir DIR]
#
#   --dry-run      print what would be done, change nothing
#   --no-build     do not build; install an existing binary (see --binary)
#   --binary PATH  the relay binary to install (default: target/release/relay)
#   --destdir DIR  install under DIR (packaging, tests); skips the host-level steps
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dry=0
build=1
binary="$root/target/release/relay"
destdir=""

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --no-build) build=0 ;;
    --binary) binary="$2"; shift ;;
    --destdir) destdir="$2"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

run() {
  echo "+ $*"
  if [ "$dry" = 0 ]; then "$@"; fi
}

if [ -z "$destdir" ] && [ "$dry" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "run as root (or with --destdir / --dry-run)" >&2
  exit 1
fi

if [ "$build" = 1 ]; then
  run sh -c "cd '$root' && cargo xtask setup && cargo xtask build-ebpf --release && cargo build --release --locked -p relay-userspace --bin relay"
fi

if [ "$dry" = 0 ] && [ ! -x "$binary" ]; then
  echo "no relay binary at $binary (build it, or pass --binary)" >&2
  exit 1
fi

run install -D -m 0755 "$binary" "$destdir/usr/local/bin/relay"
run install -D -m 0644 "$root/deploy/relay.service" "$destdir/etc/systemd/system/relay.service"
run install -D -m 0644 "$root/deploy/sysctl.d/60-relay.conf" "$destdir/etc/sysctl.d/60-relay.conf"
run install -D -m 0644 "$root/docs/operations.md" "$destdir/usr/local/share/doc/relay/operations.md"
if [ -e "$destdir/etc/relay/relay.yaml" ]; then
  echo "keeping the existing $destdir/etc/relay/relay.yaml"
else
  # The config holds API tokens: readable by root only.
  run install -D -m 0600 "$root/deploy/relay.example.yaml" "$destdir/etc/relay/relay.yaml"
fi

if [ -z "$destdir" ]; then
  if ! [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" = bpf_fs ]; then
    run mount -t bpf bpf /sys/fs/bpf
  fi
  run mkdir -p -m 0700 /sys/fs/bpf/relay
  run sysctl -p /etc/sysctl.d/60-relay.conf
  if command -v systemctl >/dev/null 2>&1; then
    run systemctl daemon-reload
  fi
  echo
  echo "Next: edit /etc/relay/relay.yaml (interfaces, advertise, tokens), run"
  echo "  relay check --config /etc/relay/relay.yaml"
  echo "and start it: systemctl enable --now relay"
fi

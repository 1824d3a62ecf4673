#!/usr/bin/env bash
# Installs (or upgrades) the relay on this host from a release artifact: nothing is compiled.
#
#   deploy/install.sh relay_VERSION_amd64.deb          the Debian package (apt resolves iproute2)
#   deploy/install.sh relay-VERSION-x86_64-linux.tar.gz  the portable tarball (any systemd distro)
#   deploy/install.sh https://…/relay_VERSION_amd64.deb  either, downloaded first (curl or wget)
#   deploy/install.sh --from-source                    developers: `cargo xtask dist` (rustup,
#                                                      nightly, bpf-linker), then the .deb
#   --dry-run   print what would be done, change nothing
#
# An upgrade restarts a running daemon, which adopts the pinned sessions: nothing is lost. A fresh
# install starts nothing: edit /etc/relay/relay.yaml, run `relay check`, `systemctl enable --now
# relay`. docs/operations.md covers upgrades, rollbacks and removal.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dry=0
artifact=""

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --from-source) artifact=source ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    *) artifact="$1" ;;
  esac
  shift
done

if [ -z "$artifact" ]; then
  echo "give a .deb, a .tar.gz, a URL of either, or --from-source (see --help)" >&2
  exit 2
fi

run() {
  echo "+ $*"
  if [ "$dry" = 0 ]; then "$@"; fi
}

if [ "$dry" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "run as root (or with --dry-run)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ "$artifact" = source ]; then
  run sh -c "cd '$root' && cargo xtask setup && cargo xtask dist"
  artifact=$(find "$root/target/dist" -maxdepth 1 -name 'relay_*_amd64.deb' 2>/dev/null | sort -V | tail -n 1)
  if [ "$dry" = 1 ] && [ -z "$artifact" ]; then
    artifact="$root/target/dist/relay_VERSION_amd64.deb"
  fi
fi

case "$artifact" in
  http://*|https://*)
    file="$work/$(basename "$artifact")"
    if command -v curl >/dev/null 2>&1; then
      run curl -fsSL -o "$file" "$artifact"
    else
      run wget -q -O "$file" "$artifact"
    fi
    artifact="$file"
    ;;
esac

case "$artifact" in
  *.deb)
    # apt installs the dependencies dpkg alone would not; a path needs the "./" or "/".
    case "$artifact" in /*) ;; *) artifact="./$artifact" ;; esac
    run apt-get install -y "$artifact"
    ;;
  *.tar.gz|*.tgz)
    run tar -xzf "$artifact" -C "$work"
    run sh -c "'$work'/relay-*/install.sh"
    ;;
  *)
    echo "$artifact: neither a .deb nor a .tar.gz" >&2
    exit 2
    ;;
esac

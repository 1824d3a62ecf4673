#!/bin/sh
# Installs, upgrades or removes the relay from this unpacked tarball (`cargo xtask dist`). Needs
# only a POSIX shell, coreutils and systemd: the binary is static.
#
#   ./install.sh [--destdir DIR]   install, or upgrade what is installed (a running daemon is
#                                  restarted and adopts the pinned sessions: nothing is lost)
#   ./install.sh --uninstall       stop and disable the service, detach XDP, remove the files;
#                                  keeps /etc/relay and the pinned sessions (until a reboot)
#   ./install.sh --purge           --uninstall, and remove /etc/relay and the pinned sessions
#
#   --destdir DIR  stage the files under DIR (packaging, tests): no systemctl, no root needed
#
# Files: /usr/local/bin/relay, /usr/local/lib/systemd/system/relay.service,
# /usr/local/lib/sysctl.d/60-relay.conf, /usr/local/share/{doc/relay,man/man1}, and
# /etc/relay/relay.yaml (from the example, mode 0600, never overwritten).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
mode=install
dest=""
while [ $# -gt 0 ]; do
  case "$1" in
    --uninstall) mode=uninstall ;;
    --purge) mode=purge ;;
    --destdir) dest="$2"; shift ;;
    -h|--help) head -n 16 "$0" | tail -n +2; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ -z "$dest" ] && [ "$(id -u)" != 0 ]; then
  echo "run as root (or stage with --destdir DIR)" >&2
  exit 1
fi

# systemd is running (not in a chroot or a staging run).
systemd=0
if [ -z "$dest" ] && [ -d /run/systemd/system ]; then
  systemd=1
fi

share="$dest/usr/local/share/relay"
sysctl_file="$dest/usr/local/lib/sysctl.d/60-relay.conf"
config="$dest/etc/relay/relay.yaml"

remove() {
  if [ "$systemd" = 1 ]; then
    systemctl disable --now relay.service || true
  fi
  relay="$dest/usr/local/bin/relay"
  mkdir -p "$dest/run/relay"
  if [ -x "$relay" ]; then
    if [ "$mode" = purge ]; then
      # Detach and unpin everything: every session is gone.
      "$relay" down --config "$config" --record-pin-dir "$dest/run/relay/pin-dir" ||
        "$relay" down --record-pin-dir "$dest/run/relay/pin-dir"
    else
      "$relay" down --detach-only --config "$config" --record-pin-dir "$dest/run/relay/pin-dir" ||
        "$relay" down --detach-only --record-pin-dir "$dest/run/relay/pin-dir"
    fi
  elif [ "$mode" = purge ] && [ -s "$dest/run/relay/pin-dir" ]; then
    # Purging after an uninstall: the binary is gone, the pins it left are not.
    rm -rf "$(cat "$dest/run/relay/pin-dir")"
  fi
  if [ -f "$share/installed-files" ]; then
    while IFS= read -r file; do
      rm -f "$dest$file"
    done <"$share/installed-files"
  fi
  rm -rf "$share" "$dest/usr/local/share/doc/relay"
  if [ "$systemd" = 1 ]; then
    systemctl daemon-reload
  fi
  if [ "$mode" = purge ]; then
    rm -rf "$dest/etc/relay" "$dest/run/relay"
    echo "relay purged: files, configuration and pinned sessions removed"
  else
    echo "relay uninstalled; kept /etc/relay and the pinned sessions (--purge removes them)"
  fi
}

if [ "$mode" != install ]; then
  remove
  exit 0
fi

was_active=0
if [ "$systemd" = 1 ] && systemctl is-active --quiet relay.service; then
  was_active=1
fi
old=""
if [ -f "$share/VERSION" ]; then
  old=$(cat "$share/VERSION")
fi

mkdir -p "$share"
: >"$share/installed-files.new"
# put SOURCE TARGET MODE: installs SOURCE at TARGET (under $dest) atomically — a running daemon
# keeps its open binary; the next start runs the new one — and records it for --uninstall.
put() {
  mkdir -p "$(dirname "$dest$2")"
  install -m "$3" "$1" "$dest$2.relay-new"
  mv -f "$dest$2.relay-new" "$dest$2"
  echo "$2" >>"$share/installed-files.new"
}
put "$here/bin/relay" /usr/local/bin/relay 0755
put "$here/systemd/relay.service" /usr/local/lib/systemd/system/relay.service 0644
put "$here/sysctl.d/60-relay.conf" /usr/local/lib/sysctl.d/60-relay.conf 0644
for doc in "$here"/doc/*; do
  put "$doc" "/usr/local/share/doc/relay/$(basename "$doc")" 0644
done
for page in "$here"/man/*; do
  put "$page" "/usr/local/share/man/man1/$(basename "$page")" 0644
done
mv -f "$share/installed-files.new" "$share/installed-files"
cp "$here/VERSION" "$share/VERSION"

if [ -e "$config" ]; then
  echo "keeping the existing $config"
else
  # It will hold API tokens: readable by root only.
  mkdir -p "$(dirname "$config")"
  install -m 0600 "$here/relay.example.yaml" "$config"
fi

if [ "$systemd" = 1 ]; then
  systemctl daemon-reload
  if ! systemd-sysctl "$sysctl_file" 2>/dev/null; then
    echo "could not apply $sysctl_file now; it applies at boot" >&2
  fi
fi

version=$(cat "$here/VERSION")
if [ -n "$old" ]; then
  echo "relay upgraded from $old to $version"
else
  echo "relay $version installed"
fi
if [ "$was_active" = 1 ]; then
  echo "restarting relay.service (the new daemon adopts the pinned sessions)"
  systemctl restart relay.service
elif [ -z "$dest" ]; then
  echo "Not started. Set interfaces, advertise and tokens in $config, run"
  echo "  relay check --config $config"
  echo "then: systemctl enable --now relay"
fi

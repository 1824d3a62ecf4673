#!/usr/bin/env bash
# Tunes a NIC for the relay's native XDP fast path:
#   - as many combined RX/TX queues as CPUs (each queue's interrupts land on one CPU, and XDP
#     runs where the interrupt lands), capped at what the NIC offers;
#   - its queue interrupts spread over the CPUs, one each, round robin;
#   - LRO and hardware GRO off (drivers refuse native XDP with them on).
#
#   deploy/tune-nic.sh IFACE [--dry-run] [--queues N]
#
# --dry-run prints what it would change and changes nothing. Safe to run again: settings already
# right are reported and left alone.
set -euo pipefail

iface=""
dry=0
queues=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --queues) queues="$2"; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    -*) echo "unknown option: $1" >&2; exit 2 ;;
    *) iface="$1" ;;
  esac
  shift
done
if [ -z "$iface" ]; then
  echo "usage: $0 IFACE [--dry-run] [--queues N]" >&2
  exit 2
fi
if ! ip link show dev "$iface" >/dev/null 2>&1; then
  echo "no interface $iface" >&2
  exit 1
fi

change() {
  if [ "$dry" = 1 ]; then
    echo "would: $*"
  else
    echo "doing: $*"
    "$@"
  fi
}

cpus=$(nproc)
want=${queues:-$cpus}

# Queues: combined channels where the NIC has them, else separate RX and TX channels.
section() { printf '%s\n' "$channels" | awk -v s="$1" -v k="$2:" '$0 ~ s {in_s=1} in_s && $1 == k {print $2; exit}'; }
if channels=$(ethtool -l "$iface" 2>/dev/null); then
  done_queues=0
  for kind in Combined RX; do
    max=$(section "Pre-set maximums" "$kind")
    cur=$(section "Current hardware settings" "$kind")
    case "$max" in ''|n/a|0) continue ;; esac
    n=$want
    [ "$n" -gt "$max" ] && n=$max
    if [ "$kind" = Combined ]; then args=(combined "$n"); else args=(rx "$n" tx "$n"); fi
    if [ "$cur" = "$n" ]; then
      echo "ok: $iface has $cur $kind queue(s)"
    else
      change ethtool -L "$iface" "${args[@]}"
    fi
    done_queues=1
    break
  done
  [ "$done_queues" = 1 ] || echo "skip: $iface has no queues to set"
else
  echo "skip: $iface does not report channels (ethtool -l)"
fi

# Offloads native XDP cannot run with.
features=$(ethtool -k "$iface" 2>/dev/null || true)
for feature in large-receive-offload rx-gro-hw; do
  state=$(printf '%s\n' "$features" | awk -v f="$feature:" '$1 == f {print $2, $3}')
  case "$state" in
    "on "*"[fixed]"*) echo "skip: $feature is fixed on (native XDP may not attach)" ;;
    on*) change ethtool -K "$iface" "$feature" off ;;
    off*) echo "ok: $feature is off" ;;
    *) echo "skip: $iface has no $feature" ;;
  esac
done

# Interrupt affinity: one CPU per queue interrupt, round robin.
irqs=$(awk -v i="$iface" '$0 ~ i {sub(":", "", $1); print $1}' /proc/interrupts)
if [ -z "$irqs" ]; then
  echo "skip: no interrupts named after $iface (virtual NIC, or named by PCI address)"
else
  cpu=0
  for irq in $irqs; do
    current=$(cat "/proc/irq/$irq/smp_affinity_list" 2>/dev/null || echo "?")
    if [ "$current" = "$cpu" ]; then
      echo "ok: irq $irq on CPU $cpu"
    else
      change sh -c "echo $cpu > /proc/irq/$irq/smp_affinity_list"
    fi
    cpu=$(( (cpu + 1) % cpus ))
  done
fi

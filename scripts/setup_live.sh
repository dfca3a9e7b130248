#!/usr/bin/env bash
# Prepare this machine for tokenpace live mode (eBPF telemetry, tc/nft faults, namespaces).
# Idempotent and non-interactive; run as root. Each step says what it does, or that nothing was needed.
#   - installs python3-bpfcc bpfcc-tools linux-headers-<arch> iperf3 iproute2 nftables chromium (the
#     dashboard test's headless browser) user-mode-linux kmod (a kernel with sch_netem that runs as a
#     program, and the insmod that loads it: `python -m live.kernel.uml` checks the netem fault backend in
#     it when this kernel has no sch_netem) if any is missing
#   - links /lib/modules/$(uname -r)/{build,source} to the installed headers when the running kernel
#     has none of its own (custom kernels: BCC only needs *some* headers, the tracepoint layouts come
#     from tracefs at run time)
#   - mounts tracefs at /sys/kernel/tracing and bpffs at /sys/fs/bpf when they are not mounted
#   - creates /run/tokenpace (fault state files, pinned tc-bpf programs)
# Then: `python -m live doctor` says whether live mode can run.
set -euo pipefail

say() { printf 'setup_live: %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
    say "not root: live mode needs root (eBPF, tc, nft, namespaces); skipping setup"
    exit 0
fi

arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
want=(python3-bpfcc bpfcc-tools "linux-headers-${arch}" iperf3 iproute2 nftables chromium user-mode-linux kmod)
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${want[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
else
    say "dpkg-query not found: not a Debian-like system, install by hand: ${want[*]}"
fi
if ((${#missing[@]})); then
    say "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
else
    say "packages present: ${want[*]}"
fi

kver=$(uname -r)
moddir=/lib/modules/$kver
newest() { ls -d "$@" 2>/dev/null | sort -V | tail -n 1; }
link_headers() {  # $1 = build|source, $2 = glob of candidate directories
    local name=$1 target
    if [[ -e $moddir/$name ]]; then
        say "$moddir/$name present ($(readlink -f "$moddir/$name"))"
        return
    fi
    if [[ -d /usr/src/linux-headers-$kver && $name == build ]]; then
        target=/usr/src/linux-headers-$kver
    else
        target=$(newest $2 || true)
    fi
    if [[ -z $target ]]; then
        say "no kernel headers under /usr/src for $moddir/$name (install linux-headers-${arch})"
        return
    fi
    mkdir -p "$moddir"
    ln -sfn "$target" "$moddir/$name"
    say "linked $moddir/$name -> $target"
}
link_headers build "/usr/src/linux-headers-*-${arch}"
link_headers source "/usr/src/linux-headers-*-common"

if [[ -d /sys/kernel/tracing/events || -d /sys/kernel/debug/tracing/events ]]; then
    say "tracefs mounted"
else
    mkdir -p /sys/kernel/tracing
    mount -t tracefs tracefs /sys/kernel/tracing
    say "mounted tracefs at /sys/kernel/tracing"
fi

if mountpoint -q /sys/fs/bpf 2>/dev/null; then
    say "bpffs mounted at /sys/fs/bpf"
else
    mkdir -p /sys/fs/bpf
    if mount -t bpf bpf /sys/fs/bpf; then
        say "mounted bpffs at /sys/fs/bpf"
    else
        say "could not mount bpffs at /sys/fs/bpf (tc-bpf loss faults will be unavailable)"
    fi
fi

mkdir -p /run/tokenpace
say "state directory /run/tokenpace ready"

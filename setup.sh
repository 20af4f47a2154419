#!/usr/bin/env bash
# One-time set-up of a fresh Debian 12 machine, as root: Debian packages, kernel headers for bcc,
# the virtual environment (with the system's bcc visible), and the Cython build.
# Safe to run again: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")"

DEBIAN_PACKAGES=(
  python3 python3-venv python3-dev gcc          # the venv and the Cython build
  python3-bpfcc bpfcc-tools libbpf1              # bcc: the eBPF compiler/loader
  linux-headers-amd64                            # headers bcc compiles against (see below)
  iproute2 iptables nftables ethtool conntrack   # netlink tools, the kernel backend's rules
  iputils-ping dnsutils netcat-openbsd socat tcpdump util-linux
  iperf3 wrk                                     # load generators for tests and benchmarks
  docker.io busybox-static                       # docker0 baseline (bench/docker_host.py): dockerd
                                                 # confined to a netns, image built from busybox
)

echo "== Debian packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# docker.io's (and containerd's) maintainer scripts start their daemons through invoke-rc.d. This
# machine has no systemd (PID 1 is not an init), so that would be the SysV script: a dockerd in the
# ROOT network namespace, creating docker0 and rewriting the root netns's iptables. The benchmark
# must never touch the root netns; it runs its own dockerd inside a netns it creates
# (bench/docker_host.py). A policy-rc.d that exits 101 ("action forbidden") makes invoke-rc.d skip
# every start during this install. It is temporary: an existing one (Docker-built images ship
# one) is put back afterwards, ours is removed, also when the install fails.
POLICY=/usr/sbin/policy-rc.d
POLICY_SAVED=""
if [ -e "$POLICY" ]; then POLICY_SAVED=$(mktemp); cp -p "$POLICY" "$POLICY_SAVED"; fi
restore_policy() {
  if [ -n "$POLICY_SAVED" ]; then mv -f "$POLICY_SAVED" "$POLICY"; else rm -f "$POLICY"; fi
}
trap restore_policy EXIT
printf '#!/bin/sh\n# temporary, from dockline setup.sh: start no service during apt-get install\nexit 101\n' >"$POLICY"
chmod 755 "$POLICY"
apt-get install -y -q --no-install-recommends "${DEBIAN_PACKAGES[@]}"
restore_policy
trap - EXIT

echo "== kernel headers for bcc"
# bcc looks in /lib/modules/$(uname -r)/{build,source}. When the running kernel has no headers
# package (this VM runs 6.18 with Debian's 6.1 userland), point them at Debian's newest headers;
# bcc 0.26 compiles against those (only uapi/ headers are used by our programs).
KREL=$(uname -r)
if [ ! -e "/lib/modules/$KREL/build/include" ]; then
  if apt-get install -y -q "linux-headers-$KREL" 2>/dev/null; then
    echo "installed linux-headers-$KREL"
  else
    HDR=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -n 1)
    COMMON=$(ls -d /usr/src/linux-headers-*-common | sort -V | tail -n 1)
    mkdir -p "/lib/modules/$KREL"
    ln -sfn "$HDR" "/lib/modules/$KREL/build"
    ln -sfn "$COMMON" "/lib/modules/$KREL/source"
    echo "linked /lib/modules/$KREL/build -> $HDR, source -> $COMMON"
  fi
fi

echo "== virtual environment (.venv, with the system's bcc)"
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/pip install -q --upgrade pip setuptools wheel
.venv/bin/pip install -q -r requirements.txt
.venv/bin/python -c "import bcc, pyroute2, dnslib" \
  || { echo "setup: bcc or pyroute2 is not importable from .venv" >&2; exit 1; }

echo "== build (Cython extensions) and install dockline (editable)"
.venv/bin/pip install -q --no-build-isolation -e .
.venv/bin/python -c "import dockline.fastpath as f; assert 'cython' in f.IMPLEMENTATIONS, f.IMPLEMENTATIONS" \
  || { echo "setup: the Cython extensions did not build" >&2; exit 1; }
echo "== done: run the tests with  .venv/bin/python -m pytest"

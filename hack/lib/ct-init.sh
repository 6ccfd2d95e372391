#!/bin/bash
# The init of an e2e test container, run as pid 1 of a new pid and mount
# namespace, and of a user namespace for a userns scenario (see
# ../e2e-criu.sh and ct.sh): builds the fixtures' container layout in
# ROOT (a tmpfs mounted by the caller), pivots into it, runs the scenario,
# then sleeps until killed or dumped.
#
# usage: ct-init.sh ROOT SCENARIO
# env:   CT_BINDS (HOSTPATH:CTPATH ... to bind in), CT_USERNS (1: in a user
#        namespace)
set -eu
root=$1 scenario=$2

# In a user namespace (CT_USERNS=1, see ct.sh), every mount copied from the
# host is locked, ROOT too, and pivot_root refuses a locked new root: as
# runc and LXC do, make ROOT a mount of the container's own, a recursive
# bind of itself (its idmapped volumes, attached by hack/uns, come along).
# Its /dev is not sticky and world-writable (tmpfs's default 1777) there:
# the sticky check of O_CREAT opens (fs.protected_regular) refuses the
# host's /dev/null, owned by an id the container does not map, in a
# directory of the container's root.
devopts=()
if [ "${CT_USERNS:-}" = 1 ]; then
	mount --rbind "$root" "$root"
	devopts=(-o mode=755)
fi

# The host directories the fixtures bind in: CRIU dumps them as external
# mounts (--ext-mount-map auto).
for d in bin lib lib64 usr etc sbin; do
	[ -e "/$d" ] || continue
	mkdir -p "$root/$d"
	mount --bind "/$d" "$root/$d"
done
# Extra host mounts a scenario asks for (its host.sh sets CT_BINDS to
# "HOSTPATH:CTPATH ..."): binds of the host's shared mounts, for external
# sharing and external masters.
for b in ${CT_BINDS:-}; do
	mkdir -p "$root${b#*:}"
	mount --bind "${b%%:*}" "$root${b#*:}"
done
mkdir -p "$root/proc" "$root/dev" "$root/tmp"
mount -t tmpfs "${devopts[@]}" dev "$root/dev"
touch "$root/dev/null"
mount --bind /dev/null "$root/dev/null"
mount -t tmpfs tmp "$root/tmp"
cp "$scenario" "$root/.scenario.sh"

cd "$root"
mkdir -p .old
pivot_root . .old
mount -t proc proc /proc
umount -l /.old
rmdir /.old

# Nothing open outside the container: CRIU dumps every fd.
exec </dev/null >/dev/null 2>&1
for fd in /proc/$$/fd/*; do
	fd=${fd##*/}
	[ "$fd" -gt 2 ] && eval "exec $fd>&-" || true
done
cd /tmp
bash /.scenario.sh >/scenario.log 2>&1 || echo "scenario failed: $?" >>/scenario.log
cd /
touch /.ready
exec sleep 1000000

#!/bin/bash
# A CRIU action script of hack/e2e-runc.sh's "+remount" restores: at
# pre-restore it mounts again the host's mounts below the volume sources
# that `runc restore` has just unmounted. runc (1.1 up to at least 1.5.1)
# binds each volume source recursively into the rootfs before starting CRIU
# and unmounts it lazily: the unmount propagates to the source's peers and
# takes the host's own submounts with it. With them back, CRIU and mntv2
# find the host's peer groups the images refer to, as a host without that
# runc bug would have them.
#
# env: E2E_RUNC_REMOUNT (the list: "RELATIVE_PATH SOURCE" lines),
#      E2E_RUNC_HOST (the directory they are relative to). CRIU runs this in
#      runc's mount namespace, the one of e2e-runc.sh.
set -eu
[ "${CRTOOLS_SCRIPT_ACTION:-}" = pre-restore ] || exit 0
while read -r rel src; do
	if ! awk -v p="$E2E_RUNC_HOST/$rel" '$5 == p { f = 1 } END { exit !f }' /proc/self/mountinfo; then
		mkdir -p "$E2E_RUNC_HOST/$rel"
		mount -t tmpfs -o size=1m "$src" "$E2E_RUNC_HOST/$rel"
		echo "remount-hook: mounted $E2E_RUNC_HOST/$rel again" >&2
	fi
done <"$E2E_RUNC_REMOUNT"

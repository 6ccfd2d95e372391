# Shell functions shared by e2e-criu.sh and bench-criu.sh: test containers
# for CRIU and their cleanup. Needs $here (the hack directory).

# The first error of a CRIU log (not the rlimit warning every run has).
firsterr() { grep Error "$1" | grep -v RLIMIT_NOFILE | head -1; }

# Unmount everything mounted below dir in this namespace, deepest first
# (the containers' roots, a scenario's host mounts).
unmount_below() {
	local dir=$1
	awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done
}

# Kill a restored tree by its root's pid and wait until it is gone.
kill_tree() {
	local pid=$1
	[ -n "$pid" ] || return 0
	kill -9 "$pid" 2>/dev/null || true
	for _ in $(seq 100); do
		[ -e "/proc/$pid" ] || return 0
		sleep 0.05
	done
}

# Digest of the images directory: every file name and its bytes.
digest() { (cd "$1" && find . -type f | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -c1-16; }

# Processes whose root is dir: what a restore of it left running. By the
# root's identity (device and inode), not its path: a restored task's root
# is a mount of its own namespace, which /proc/PID/root names "/" from here.
tasks_in() {
	local dir=$1 p want
	want=$(stat -L -c %d:%i "$dir") || return 0
	for p in /proc/[0-9]*; do
		[ "$(stat -L -c %d:%i "$p/root" 2>/dev/null)" = "$want" ] && echo "${p#/proc/}"
	done
	return 0
}

# The map of a scenario with a userns file: its first line that is not a
# comment (CONTAINER:HOST:COUNT[,...], for uids and gids).
ct_map() { grep -v '^#' "$1/userns" | head -n1; }

# ct_userns W SCENARIO_DIR: for a container in a user namespace (the
# scenario's userns file: the map, then hack/uns arguments, any number a
# line, $W standing for W; lines starting with # are comments), sets
# uargs to the launcher's arguments, and gives the root tmpfs to the
# container's root (the host id its 0 maps to), who must reach it.
ct_userns() {
	local w=$1 sdir=$2 map line words hroot
	map=$(ct_map "$sdir")
	uargs=(-map "$map")
	while read -r line; do
		line=${line//\$W/$w}
		read -ra words <<<"$line"
		uargs+=("${words[@]}")
	done < <(grep -v '^#' "$sdir/userns" | tail -n +2)
	hroot=$(tr , '\n' <<<"$map" | awk -F: '$1 == 0 { print $2 }')
	chown "${hroot:?$sdir/userns maps no 0}:$hroot" "$w/root"
	# The scratch directories above the root (mktemp makes them 0700).
	chmod o+x "$w" "$(dirname "$w")"
}

# start_ct W SCENARIO_DIR: builds the container; echoes its init's pid.
# A scenario with a userns file runs in a user namespace (see ct_userns).
start_ct() {
	local w=$1 sdir=$2
	mkdir -p "$w/root" "$w/img" "$w/work"
	mount -t tmpfs ctroot "$w/root"
	CT_BINDS=
	W=$w
	if [ -f "$sdir/host.sh" ]; then
		# shellcheck disable=SC1091
		. "$sdir/host.sh"
	fi
	if [ -f "$sdir/userns" ]; then
		# In a user namespace of its own, through hack/uns (its init
		# is the launcher's only child, as it is unshare's).
		local uargs
		ct_userns "$w" "$sdir"
		CT_BINDS=$CT_BINDS CT_USERNS=1 "${UNS:?UNS: the hack/uns binary is not set}" "${uargs[@]}" -root "$w/root" -- \
			setsid bash "$here/lib/ct-init.sh" "$w/root" "$sdir/scenario.sh" </dev/null >"$w/ct.out" 2>&1 &
	else
		CT_BINDS=$CT_BINDS unshare --mount --pid --fork --propagation unchanged \
			setsid bash "$here/lib/ct-init.sh" "$w/root" "$sdir/scenario.sh" </dev/null >"$w/ct.out" 2>&1 &
	fi
	local upid=$! i
	for i in $(seq $((${CT_READY_SECONDS:-10} * 20))); do
		[ -e "$w/root/.ready" ] && break
		sleep 0.05
	done
	if [ ! -e "$w/root/.ready" ]; then
		# Not ready in time: end the container we started (its init is
		# the only child of unshare) before giving up.
		kill -9 "$(cut -d' ' -f1 "/proc/$upid/task/$upid/children" 2>/dev/null)" 2>/dev/null || true
		cat "$w/ct.out" >&2
		return 1
	fi
	cut -d' ' -f1 "/proc/$upid/task/$upid/children"
}


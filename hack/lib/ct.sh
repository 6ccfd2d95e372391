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

# Processes whose root is dir: what a restore of it left running.
tasks_in() {
	local dir=$1 p
	for p in /proc/[0-9]*; do
		[ "$(readlink "$p/root" 2>/dev/null)" = "$dir" ] && echo "${p#/proc/}"
	done
	return 0
}

# start_ct W SCENARIO_DIR: builds the container; echoes its init's pid.
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
	CT_BINDS=$CT_BINDS unshare --mount --pid --fork --propagation unchanged \
		setsid bash "$here/lib/ct-init.sh" "$w/root" "$sdir/scenario.sh" </dev/null >"$w/ct.out" 2>&1 &
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


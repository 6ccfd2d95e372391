#!/usr/bin/env bash
# End-to-end test of mntv2 with real CRIU.
#
# For every scenario (the fixtures' testdata/criu-4.2/*/scenario.sh and
# mntv2's own testdata/e2e/*/scenario.sh) it builds a container (new mount
# and pid namespace, a tmpfs root with the host's /bin /lib /usr /etc binds,
# proc, a tmpfs /dev and /tmp), runs the scenario in it, captures every
# namespace (mntv2 show --tree --canonical), checkpoints it with criu dump,
# then restores it seven ways: CRIU alone, CRIU + mntv2 (--action-script;
# reduce and complete, the default) and CRIU + mntv2 with MNTV2_REDUCE=0
# (strip and reapply), each with mount-v2 and with --mntns-compat-mode, and
# mntv2 restore standalone onto the same root. Each restore is captured
# again and compared with the capture before the dump; verify checks it
# against the images too. Then the failure paths: an injected failure in
# post-restore aborts the restore, kill -9 of CRIU between pre-restore and
# post-restore, a read-only images directory, and the go-criu RPC path.
# A scenario with a userns file runs in a user namespace of its own, started
# by hack/uns (built here), and mntv2 restore gets --userns of a user
# namespace with its map (testdata/e2e/README.md).
#
# Everything runs in a private mount namespace of its own: the host's mounts
# are never touched. Only pids this script started (or CRIU restored for it)
# are ever killed.
#
# usage: hack/e2e-criu.sh [SCENARIO_DIR...]
# env:   CRIU (default: criu on PATH), MNTV2 (default: bin/mntv2),
#        E2E_JSON (write the table as JSON there too)
set -euo pipefail
[ -n "${E2E_TRACE:-}" ] && set -x

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
if [ "${MNTV2_E2E_INNER:-}" != 1 ]; then
	exec unshare --mount --propagation private env MNTV2_E2E_INNER=1 "$0" "$@"
fi

CRIU=${CRIU:-criu}
MNTV2=${MNTV2:-$top/bin/mntv2}
CRIU=$(command -v "$CRIU") || { echo "e2e: CRIU not found (set CRIU=/path/to/criu)" >&2; exit 2; }
[ -x "$MNTV2" ] || { echo "e2e: $MNTV2 is missing: run make build" >&2; exit 2; }
MNTV2=$(cd "$(dirname "$MNTV2")" && pwd)/$(basename "$MNTV2")
export MNTV2
export MNTV2_LOG_LEVEL=${MNTV2_LOG_LEVEL:-info}

if [ $# -eq 0 ]; then
	set -- "$top"/testdata/criu-4.2/*/ "$top"/testdata/e2e/*/
fi

scratch=$(mktemp -d /tmp/mntv2-e2e.XXXXXX)
failures=0
declare -a rows=()

note() { printf '%s\n' "$*" >&2; }
fail() { note "FAIL: $*"; failures=$((failures + 1)); }

# shellcheck source=lib/ct.sh
. "$here/lib/ct.sh"

# The launcher of containers in a user namespace (scenarios with a userns
# file), for start_ct and the user namespace holder of mntv2 restore.
UNS=$scratch/uns
(cd "$top" && go build -o "$UNS" ./hack/uns)

# standalone W: mntv2 restore onto the container's root (the directory CRIU
# restores onto), compared like the CRIU restores; sets cell. For a
# container in a user namespace (a userns scenario), as a container manager
# restores it: a holder of a user namespace with the scenario's map, whose
# namespace the restored mount namespaces are given (--userns).
standalone() {
	local w=$1 pins=$1/pins ok=1 userns=() hjob='' hin hpid=''
	rm -rf "$pins"
	if [ -f "$sdir/userns" ]; then
		coproc HOLDER { "$UNS" -hold -map "$(ct_map "$sdir")"; }
		hjob=$HOLDER_PID hin=${HOLDER[1]}
		read -r hpid <&"${HOLDER[0]}" || true
		userns=(--userns "/proc/${hpid:-none}/ns/user")
	fi
	"$MNTV2" restore --images "$w/img" --root "$w/root" --ext-mount-map auto --pin-dir "$pins" "${userns[@]}" \
		>"$w/work/mntv2-restore.log" 2>&1 || ok=
	if [ -n "$hjob" ]; then
		# The holder ends when its stdin closes.
		exec {hin}>&-
		wait "$hjob" || true
	fi
	if [ -z "$ok" ]; then
		cell=fails
		return
	fi
	# Namespaces by order, as show --tree names them.
	"$MNTV2" show --pin-dir "$pins" --canonical 2>&1 | awk '/^mount namespace [0-9]+:/ { id = $3; sub(":", "", id); n[id] = ++k; $3 = k ":" }
		/^  group / { line = " "; for (i = 1; i <= NF; i++) { t = $i; if (match(t, /^[0-9]+:\//) && (substr(t, 1, RLENGTH - 2) in n)) t = n[substr(t, 1, RLENGTH - 2)] substr(t, RLENGTH - 1); line = line " " t }; print line; next }
		{ print }' >"$w/after-standalone.txt"
	if diff -q "$w/before.txt" "$w/after-standalone.txt" >/dev/null; then
		cell=identical
	else
		cell="wrong($("$MNTV2" verify --images "$w/img" --pin-dir "$pins" 2>/dev/null | grep -vc '^differ\|^identical' || true))"
	fi
	"$MNTV2" release --pin-dir "$pins" >/dev/null 2>&1 || cell="$cell,release-fails"
}

# restore W MODE WITH [extra criu args]: sets cell and rpid.
restore() {
	local w=$1 mode=$2 with=$3
	shift 3
	local args=(restore -d -D "$w/img" -W "$w/work" --root "$w/root" --ext-mount-map auto
		--pidfile "$w/work/pid" -o "restore-$mode-$with.log" -v4)
	[ "$mode" = compat ] && args+=(--mntns-compat-mode)
	[ "$with" = mntv2 ] || [ "$with" = strip ] && args+=(--action-script "$MNTV2")
	local reduce=1
	[ "$with" = strip ] && reduce=0
	rm -f "$w/work/pid"
	rpid=
	if ! { MNTV2_REDUCE=$reduce "$CRIU" "${args[@]}" "$@" >/dev/null 2>&1; } 2>/dev/null; then
		cell=fails
		return
	fi
	rpid=$(cat "$w/work/pid")
	"$MNTV2" show --tree "$rpid" --canonical >"$w/after-$mode-$with.txt" 2>&1 || true
	if diff -q "$w/before.txt" "$w/after-$mode-$with.txt" >/dev/null; then
		cell=identical
	else
		cell="wrong($("$MNTV2" verify --images "$w/img" --tree "$rpid" 2>/dev/null | grep -vc '^differ\|^identical' || true))"
	fi
	# A scenario's own check (check.sh) of what the comparison cannot see.
	check_failed=
	if [ -f "$sdir/check.sh" ]; then
		W=$w
		# shellcheck disable=SC1091
		. "$sdir/check.sh"
		[ -z "$check_failed" ] || { cell="wrong(check)"; note "$name ($mode, $with): $check_failed"; }
	fi
	# verify --tree against the images must agree with the comparison.
	if ! "$MNTV2" verify --images "$w/img" --tree "$rpid" >"$w/verify-$mode-$with.txt" 2>&1; then
		[ "$cell" != identical ] || cell="wrong(verify)"
	fi
}

# Columns: CRIU alone; CRIU + mntv2 (reduce and complete, the default);
# CRIU + mntv2 with MNTV2_REDUCE=0 (strip and reapply); each in mount-v2
# and compat mode; then mntv2 restore, standalone.
fmt='%-32s %-11s %-11s %-11s %-11s %-11s %-11s %-11s\n'
# shellcheck disable=SC2059
printf "$fmt" scenario "criu/v2" "mntv2/v2" "strip/v2" "criu/compat" "mntv2/compat" "strip/compat" "restore"
for sdir in "$@"; do
	sdir=${sdir%/}
	name=$(basename "$sdir")
	w=$scratch/$name
	mkdir -p "$w"
	if ! ct=$(start_ct "$w" "$sdir"); then
		fail "$name: the container did not start"
		continue
	fi
	"$MNTV2" show --tree "$ct" --canonical >"$w/before.txt"
	# mntv2 as the dump's action script too: at post-dump it records what
	# CRIU's images lose (mntv2-dump.json), which CRIU alone ignores.
	if ! "$CRIU" dump -t "$ct" -D "$w/img" -W "$w/work" -o dump.log -v4 --ext-mount-map auto \
		--enable-external-sharing --enable-external-masters --action-script "$MNTV2" >/dev/null 2>&1; then
		fail "$name: criu dump failed: $(firsterr "$w/work/dump.log")"
		kill_tree "$ct"
		continue
	fi
	sum=$(digest "$w/img")
	declare -A cells=()
	for mode in v2 compat; do
		for with in alone mntv2 strip; do
			restore "$w" "$mode" "$with"
			kill_tree "$rpid"
			if [ "$(digest "$w/img")" != "$sum" ]; then
				cell="$cell,images-changed!"
				fail "$name ($mode, $with): the images directory changed"
			fi
			# The default mode must be exact; strip and reapply leaves
			# the mounts to CRIU, so it must be no worse than CRIU alone.
			if [ "$cell" != identical ] && { [ "$with" = mntv2 ] ||
				{ [ "$with" = strip ] && [ "${cells[$mode-alone]}" = identical ]; }; }; then
				fail "$name ($mode, CRIU + mntv2 $with): $cell; see $w"
			fi
			cells[$mode-$with]=$cell
		done
	done
	standalone "$w"
	# A scenario's expect-restore file names what mntv2 restore must
	# refuse (with this text in its error), as only CRIU can make it.
	if [ -f "$sdir/expect-restore" ] && [ "$cell" = fails ] &&
		grep -qF "$(cat "$sdir/expect-restore")" "$w/work/mntv2-restore.log"; then
		cell=refused
	fi
	[ "$cell" = identical ] || [ "$cell" = refused ] || fail "$name (mntv2 restore): $cell; see $w"
	cells[standalone]=$cell
	printf "$fmt" "$name" "${cells[v2-alone]}" "${cells[v2-mntv2]}" "${cells[v2-strip]}" "${cells[compat-alone]}" "${cells[compat-mntv2]}" "${cells[compat-strip]}" "${cells[standalone]}"
	rows+=("{\"scenario\":\"$name\",\"criu_v2\":\"${cells[v2-alone]}\",\"mntv2_v2\":\"${cells[v2-mntv2]}\",\"mntv2_strip_v2\":\"${cells[v2-strip]}\",\"criu_compat\":\"${cells[compat-alone]}\",\"mntv2_compat\":\"${cells[compat-mntv2]}\",\"mntv2_strip_compat\":\"${cells[compat-strip]}\",\"mntv2_restore\":\"${cells[standalone]}\"}")
	unset cells
done

if [ -n "${E2E_JSON:-}" ]; then
	(IFS=,; echo "[${rows[*]}]") >"$E2E_JSON"
fi

# The failure paths, on fixture 01 (and 02 for the RPC path).
fx=$top/testdata/criu-4.2
f01=$scratch/01-seed-reverse-order
if [ -d "$f01/img" ]; then
	sdir=$fx/01-seed-reverse-order name=01-seed-reverse-order
	sum=$(digest "$f01/img")

	# 1. post-restore cannot apply sharing: CRIU aborts, nothing survives.
	MNTV2_FAIL_SYSCALL=3 restore "$f01" v2 mntv2
	left=$(tasks_in "$f01/root")
	if [ "$cell" = fails ] && [ -z "$left" ] && [ "$(digest "$f01/img")" = "$sum" ]; then
		echo "injected failure in post-restore: CRIU aborted, no task left, images identical: ok"
	else
		fail "injected failure: cell=$cell tasks left=[$left] images $(digest "$f01/img") vs $sum"
		for p in $left; do kill_tree "$p"; done
	fi

	# 2. kill -9 of CRIU between pre-restore and post-restore.
	rm -f "$f01/work/init.pid"
	MNTV2_KILL_AT=setup-namespaces E2E_PIDFILE=$f01/work/init.pid \
		restore "$f01" v2 killer --action-script "$here/lib/kill-criu-hook.sh"
	[ -s "$f01/work/init.pid" ] && kill_tree "$(cat "$f01/work/init.pid")"
	for p in $(tasks_in "$f01/root"); do kill_tree "$p"; done
	for _ in $(seq 100); do
		[ -e "$f01/img/mntv2-manifest.json" ] || break
		sleep 0.05
	done
	if [ "$cell" = fails ] && [ "$(digest "$f01/img")" = "$sum" ]; then
		restore "$f01" v2 mntv2
		kill_tree "$rpid"
		if [ "$cell" = identical ]; then
			echo "kill -9 of CRIU after pre-restore: the watcher put the images back, the next restore is identical: ok"
		else
			fail "restore after kill -9: $cell"
		fi
	else
		fail "kill -9 of CRIU: cell=$cell, images $(digest "$f01/img") vs $sum"
		"$MNTV2" criu-images restore "$f01/img" >/dev/null || true
	fi

	# 2b. kill -9 of CRIU while the hook is in post-restore (paused there):
	# the hook must not finish a restore whose CRIU is gone, no task may
	# be left, and the images come back byte-identical.
	log=$f01/work/mntv2-killed.log
	rm -f "$log" "$f01/work/pid"
	MNTV2_TEST_PAUSE=post-restore MNTV2_LOG=$log "$CRIU" restore -d -D "$f01/img" -W "$f01/work" --root "$f01/root" \
		--ext-mount-map auto --pidfile "$f01/work/pid" -o restore-killed.log -v4 --action-script "$MNTV2" >/dev/null 2>&1 &
	cpid=$!
	for _ in $(seq 200); do
		grep -q "paused before post-restore" "$log" 2>/dev/null && break
		sleep 0.05
	done
	kill -9 "$cpid" 2>/dev/null || true
	wait "$cpid" 2>/dev/null || true
	for _ in $(seq 100); do
		grep -q "is gone: not finishing" "$log" 2>/dev/null && break
		sleep 0.5
	done
	# The watcher (the resident hook) puts the originals back after that.
	for _ in $(seq 100); do
		[ -e "$f01/img/mntv2-manifest.json" ] || break
		sleep 0.05
	done
	left=$(tasks_in "$f01/root")
	if grep -q "paused before post-restore" "$log" && grep -q "is gone: not finishing" "$log" && [ -z "$left" ] &&
		[ "$(digest "$f01/img")" = "$sum" ]; then
		echo "kill -9 of CRIU during post-restore: the hook did not finish, no task left, images identical: ok"
	else
		fail "kill -9 during post-restore: tasks left [$left], images $(digest "$f01/img") vs $sum, log $log"
		for p in $left; do kill_tree "$p"; done
	fi

	# 3. a read-only images directory: pre-restore refuses, nothing changes.
	mount --bind "$f01/img" "$f01/img"
	mount -o remount,bind,ro "$f01/img"
	restore "$f01" v2 mntv2
	umount "$f01/img"
	if [ "$cell" = fails ] && grep -q "not writable" "$f01/work/restore-v2-mntv2.log" && [ -z "$(tasks_in "$f01/root")" ] &&
		[ "$(digest "$f01/img")" = "$sum" ]; then
		echo "read-only images directory: pre-restore refused with a clear message, images identical: ok"
	else
		fail "read-only images: cell=$cell"
	fi

	# 4. go-criu RPC (criu swrk) with mntv2's Notify, from go-criu v7
	# (containerd, podman) and v8 (runc).
	rpc=$scratch/rpc-restore
	(cd "$top" && go build -o "$rpc" ./hack/rpc-restore)
	for name in 01-seed-reverse-order 02-peers-no-common-root 03-slaves-of-subdirs 06-nested-mntns-peers; do
		w=$scratch/$name
		[ -d "$w/img" ] || continue
		for mode in v2 compat v2-gocriu8; do
			compat= version=7
			[ "$mode" = compat ] && compat=--compat
			[ "$mode" = v2-gocriu8 ] && version=8
			rm -f "$w/work/pid"
			cell=fails
			if "$rpc" --criu "$CRIU" --images "$w/img" --root "$w/root" --work "$w/work" --pidfile "$w/work/pid" $compat \
				--go-criu "$version" >"$w/work/rpc-$mode.out" 2>&1; then
				rpid=$(cat "$w/work/pid")
				"$MNTV2" show --tree "$rpid" --canonical >"$w/after-rpc.txt" 2>&1 || true
				if diff -q "$w/before.txt" "$w/after-rpc.txt" >/dev/null && "$MNTV2" verify --images "$w/img" --tree "$rpid" >/dev/null; then
					cell=identical
				else
					cell=wrong
				fi
				kill_tree "$rpid"
			fi
			printf 'go-criu RPC + mntv2 Notify  %-30s %-10s %s\n' "$name" "$mode" "$cell"
			[ "$cell" = identical ] || fail "RPC $name $mode: $cell; see $w/work/rpc-$mode.out"
		done
	done
fi

# 5. Host groups are found by identity, never by number: after the dump of
# scenario 09, its host share loses its group, and a decoy host mount
# takes over the group's number. The hook must refuse (strict) naming the
# host path, and with MNTV2_LENIENT=1 complete without joining the decoy.
w09=$scratch/09-external-sharing-masters
if [ -d "$w09/img" ]; then
	sdir=$top/testdata/e2e/09-external-sharing-masters name=09-external-sharing-masters
	want=$("$MNTV2" show --images "$w09/img" | awk '$2 == "/mnt/ext" { for (i = 1; i <= NF; i++) if ($i ~ /^shared:/) print substr($i, 8) }')
	umount -l "$w09/hostshare"
	mount -t tmpfs hostshare "$w09/hostshare"
	mount --make-private "$w09/hostshare"
	# A host mount with the images' number: one that has it already (it
	# was recycled meanwhile), or new shared mounts until one gets it
	# (numbers are given lowest free first, so it comes at once or soon).
	decoy=$(awk -v g="shared:$want" '{ for (i = 7; $i != "-"; i++) if ($i == g) { print $5; exit } }' /proc/self/mountinfo)
	got=
	for i in $(seq 50); do
		[ -z "$decoy" ] || break
		mkdir -p "$w09/decoy$i"
		mount -t tmpfs "decoy$i" "$w09/decoy$i"
		mount --make-shared "$w09/decoy$i"
		got=$(awk -v p="$w09/decoy$i" '$5 == p { for (i = 7; $i != "-"; i++) if ($i ~ /^shared:/) print substr($i, 8) }' /proc/self/mountinfo)
		if [ "$got" = "$want" ]; then decoy=$w09/decoy$i; break; fi
	done
	if [ -z "$decoy" ]; then
		fail "decoy: no host mount could take over peer group $want"
	else
		restore "$w09" v2 mntv2
		kill_tree "$rpid"
		if [ "$cell" = fails ] && grep -q "$w09/hostshare.*no peer group\|no mount of this host.*in a peer group" "$w09/work/restore-v2-mntv2.log"; then
			echo "decoy host group (shared:$want taken over by $decoy): strict mode refused, naming the host share: ok"
		else
			fail "decoy: strict mode gave $cell, not a refusal naming $w09/hostshare (see $w09/work/restore-v2-mntv2.log)"
		fi
		MNTV2_LENIENT=1 restore "$w09" v2 mntv2
		joined=
		[ -n "$rpid" ] && joined=$(awk -v g="shared:$want" '$5 == "/mnt/ext" { for (i = 7; $i != "-"; i++) if ($i == g) print "yes" }' "/proc/$rpid/mountinfo")
		kill_tree "$rpid"
		if [ -n "$rpid" ] && [ -z "$joined" ] && grep -q "(lenient)" "$w09/work/restore-v2-mntv2.log"; then
			echo "decoy host group: lenient mode completed, never joined the decoy, and said why: ok"
		else
			fail "decoy: lenient mode: restored pid [$rpid], joined the decoy [$joined]"
		fi
	fi
fi

if [ "$failures" -gt 0 ]; then
	echo "e2e: $failures failures (scratch kept in $scratch)"
	exit 1
fi
# The containers' roots and the scenarios' host mounts are mounts of
# this private namespace.
unmount_below "$scratch"
rm -rf "$scratch"
echo "e2e: all passed"

#!/usr/bin/env bash
# End-to-end test of mntv2 with real runc (Debian's runc 1.1) and CRIU's
# runc.conf, the way a runc user installs the hook.
#
# For every case (hack/runc/cases.sh) it makes an OCI bundle: a busybox
# rootfs, a plain directory on this disk or an overlay mounted here, and a
# config.json from `runc spec` with runc's default mounts, masked and
# read-only paths kept, plus the case's volumes (tmpfs; binds of host
# directories that are shared mounts here, rslave or rshared). It starts the
# container (runc run -d), makes the case's mounts (host mounts propagating
# in, container mounts propagating out, a container that makes its / shared),
# probes where mounts propagate, captures the tree (mntv2 show --canonical
# and mountinfo), checkpoints it (runc checkpoint --criu CRIU), then restores
# it twice from the same images: with CRIU alone and with CRIU + mntv2 as the
# action script named in /etc/criu/runc.conf (strict mode). Each restore is
# compared with the capture: the whole tree, its sharing, mntv2 verify
# against the images, the host's mounts below the volume sources, and the
# probes again. runc.conf holds, besides action-script, what CRIU needs for
# propagated volumes (ext-mount-map auto, enable-external-masters,
# enable-external-sharing); the case's checkpoint and its CRIU-alone restore
# get the same file without action-script (no file at all where the case
# needs nothing). A pre-existing /etc/criu/runc.conf is put back at the end.
#
# It fails (exit 1) when a restore that CRIU alone completes fails with the
# hook, when the hook's sharing (tree, probes, host mounts) differs from the
# capture where CRIU alone's does not, when a restore changes the images, or
# when anything cannot run (a checkpoint, a container). What runc changes on
# purpose (masked paths bound to the host's /dev/null, cgroup v1 roots) shows
# in the tree column of both restores and is listed per case.
#
# Everything runs in a private mount namespace of its own; runc keeps its
# state in the scratch directory, so only containers made here are ever
# deleted. Installs runc, busybox-static, jq and iptables (CRIU's network
# lock) with apt-get when missing, without runc's recommended criu (Debian's
# criu 3.17 does not work on Linux 6.18).
#
# usage: hack/e2e-runc.sh [CASE...]      (default: every case)
# env:   CRIU    CRIU binary, at least 3.19 (default:
#                ../shared/tools/criu-4.2/criu beside the checkout)
#        MNTV2   mntv2 binary (default: bin/mntv2)
#        E2E_RUNC_TMP  where the scratch directory goes (default /var/tmp;
#                      the plain rootfs must be on a disk filesystem)
#        E2E_RUNC_DIAG lenient|disable: a diagnosis run with MNTV2_LENIENT=1
#                      or MNTV2_DISABLE=1 (never passes; refused under CI)
#        E2E_RUNC_KEEP=1  keep the scratch directory
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")

if [ "$(id -u)" != 0 ]; then
	echo "e2e-runc: needs root (containers, mount namespaces)" >&2
	exit 2
fi

if [ "${MNTV2_E2E_RUNC_INNER:-}" != 1 ]; then
	# What the test needs, before anything else (apt-get changes no mount).
	missing=
	for p in runc busybox-static jq iptables podman; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=" $p"
	done
	if [ -n "$missing" ]; then
		echo "e2e-runc: installing$missing" >&2
		export DEBIAN_FRONTEND=noninteractive
		# shellcheck disable=SC2086
		apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 ||
			{ apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $missing >/dev/null; }
	fi
	exec unshare --mount --propagation private env MNTV2_E2E_RUNC_INNER=1 "$0" "$@"
fi

t_start=$(date +%s.%N)
CRIU=${CRIU:-$(cd "$top/.." && pwd)/shared/tools/criu-4.2/criu}
MNTV2=${MNTV2:-$top/bin/mntv2}
CRIU=$(command -v "$CRIU") || { echo "e2e-runc: CRIU not found (set CRIU=/path/to/criu)" >&2; exit 2; }
[ -x "$MNTV2" ] || { echo "e2e-runc: $MNTV2 is missing: run make build" >&2; exit 2; }
MNTV2=$(cd "$(dirname "$MNTV2")" && pwd)/$(basename "$MNTV2")
criu_version=$("$CRIU" --version 2>/dev/null | awk '/^Version:/ { print $2 }')
# CRIU runs an action-script named in a configuration file in RPC mode
# (runc's) from 3.19 on.
if ! printf '3.19\n%s\n' "$criu_version" | sort -V -C; then
	echo "e2e-runc: $CRIU is CRIU '$criu_version'; runc's restores need CRIU 3.19 or later (Debian's 3.17 does not work on this kernel)" >&2
	exit 2
fi
export MNTV2 MNTV2_LOG_LEVEL=${MNTV2_LOG_LEVEL:-info}
# Strict mode: the environment wins over /etc/mntv2/criu-hook.conf.
export MNTV2_LENIENT=0 MNTV2_DISABLE=0
diag=
case ${E2E_RUNC_DIAG:-} in
'') ;;
lenient | disable)
	if [ "${CI:-}" = true ]; then
		echo "e2e-runc: E2E_RUNC_DIAG is for diagnosis by hand, not for CI" >&2
		exit 2
	fi
	diag=$E2E_RUNC_DIAG
	if [ "$diag" = lenient ]; then MNTV2_LENIENT=1; else MNTV2_DISABLE=1; fi
	;;
*) echo "e2e-runc: E2E_RUNC_DIAG=$E2E_RUNC_DIAG: want lenient or disable" >&2; exit 2 ;;
esac

# podman's conmon runs runc, and so CRIU and the hook, without this
# environment: then only mntv2's own configuration file could relax it.
if [ -z "$diag" ] && grep -Eqs '^[[:space:]]*MNTV2_(LENIENT|DISABLE)[[:space:]]*=[[:space:]]*1' /etc/mntv2/criu-hook.conf; then
	echo "e2e-runc: /etc/mntv2/criu-hook.conf sets MNTV2_LENIENT or MNTV2_DISABLE: not strict mode" >&2
	exit 2
fi

# One run at a time: /etc/criu/runc.conf is the machine's.
exec 9>/run/lock/mntv2-e2e-runc.lock
flock -n 9 || { echo "e2e-runc: another e2e-runc run holds /run/lock/mntv2-e2e-runc.lock" >&2; exit 2; }

# shellcheck source=lib/ct.sh
. "$here/lib/ct.sh"
# shellcheck source=runc/lib.sh
. "$here/runc/lib.sh"
# shellcheck source=runc/cases.sh
. "$here/runc/cases.sh"
# shellcheck source=runc/podman.sh
. "$here/runc/podman.sh"
all_cases+=" podman"

if [ $# -eq 0 ]; then
	read -r -a cases <<<"$all_cases"
	set -- "${cases[@]}"
fi
for c in "$@"; do
	declare -F "case_${c//-/_}_setup" >/dev/null || { echo "e2e-runc: no case $c (cases: $all_cases)" >&2; exit 2; }
done

scratch=$(mktemp -d "${E2E_RUNC_TMP:-/var/tmp}/mntv2-runc.XXXXXX")
state=$scratch/state
scratch_fs=$(stat -f -c %T "$scratch")
failures=0
declare -a created=() created_podman=() fail_lines=()

# since T0: seconds from T0 (date +%s.%N) to now, one decimal.
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
note() { printf '%s\n' "$*" >&2; }
fail() {
	note "FAIL: $*"
	fail_lines+=("$*")
	failures=$((failures + 1))
}

# A pre-existing runc.conf is kept aside and put back; so is the lack of one.
conf_saved=/etc/criu/runc.conf.mntv2-e2e-saved
criu_dir_made=
[ -d /etc/criu ] || criu_dir_made=1
if [ -e /etc/criu/runc.conf ]; then
	[ ! -e "$conf_saved" ] || { echo "e2e-runc: $conf_saved exists: an earlier run was interrupted; put it back as /etc/criu/runc.conf first" >&2; exit 2; }
	mv /etc/criu/runc.conf "$conf_saved"
fi

cleanup() {
	set +e
	local n
	for n in "${created[@]}"; do
		run_runc delete -f "$n" >/dev/null 2>&1
	done
	for n in "${created_podman[@]}"; do
		run_podman rm -f -t 0 "$n" >/dev/null 2>&1
	done
	remove_conf
	if [ -e "$conf_saved" ]; then
		mv "$conf_saved" /etc/criu/runc.conf
	elif [ -n "$criu_dir_made" ]; then
		rmdir /etc/criu 2>/dev/null
	fi
	unmount_below "$scratch"
	if [ "$failures" -eq 0 ] && [ "${E2E_RUNC_KEEP:-}" != 1 ]; then
		rm -rf "$scratch"
	else
		note "e2e-runc: scratch kept in $scratch"
	fi
}
trap cleanup EXIT

build_base "$scratch/base"

# result[CASE.MODE.COLUMN]: the table's cells.
declare -A result=() modes=()

# diff_side '<'|'>' DIFF: the mountpoints of one side of a diff of
# host_mounts lists, on one line.
diff_side() { awk -v s="$1" '$1 == s { printf "%s%s", n++ ? " " : "", $2 }' "$2"; }

# short_verify FILE: verify's verdict for the table: its last line, without
# the images path.
short_verify() { tail -1 "$1" | sed 's|^mntv2: images [^ ]*: ||' | cut -c1-70; }

# restore_one MODE: restores the case's checkpoint (alone: CRIU alone;
# mntv2: CRIU + the hook) and fills result[$c.MODE.*].
restore_one() {
	local mode=$1 k="$c.$1" text=$CONF cell n
	reset_host_mounts
	case $mode in
	mntv2*) text="action-script $MNTV2${text:+
$text}" ;;
	esac
	case $mode in
	*+remount)
		text="action-script $here/runc/remount-hook.sh
$text"
		export E2E_RUNC_REMOUNT=$w/host-mounts.txt E2E_RUNC_HOST=$w/host
		;;
	esac
	if [ -n "$text" ]; then write_conf "$text"; else remove_conf; fi
	export MNTV2_LOG=$w/mntv2-$mode.log
	crlog=$w/rst-$mode/restore.log
	if ! "${engine}_restore" "$mode"; then
		cell="fails: $(firsterr "$crlog" 2>/dev/null | cut -c1-200)"
		result[$k.completes]=$cell
		result[$k.crlog]=$crlog
		# The hook's error: from its own log, else from CRIU's (podman's
		# conmon does not pass the environment on).
		result[$k.mntv2err]=$(cat "$MNTV2_LOG" "$crlog" 2>/dev/null | grep -m1 'level=ERROR.*err=' | sed 's/.* err=//' || true)
		check_images "$mode"
		"${engine}_delete" "$mode"
		remove_conf
		return
	fi
	result[$k.completes]=yes
	pid=$(ct_pid)
	"$MNTV2" show --pid "$pid" --canonical >"$w/after-$mode.txt" 2>&1 || true
	cp "/proc/$pid/mountinfo" "$w/after-$mode.mountinfo"
	host_mounts >"$w/host-after-$mode.txt"
	n=$(diff "$w/before.txt" "$w/after-$mode.txt" | grep -c '^>' || true)
	if [ "$n" = 0 ]; then result[$k.tree]=identical; else result[$k.tree]="$n lines differ"; fi
	if diff <(sharing_of "$w/before.txt") <(sharing_of "$w/after-$mode.txt") >"$w/sharing-$mode.diff"; then
		result[$k.sharing]=same
	else
		result[$k.sharing]="differs ($(grep -c '^>' "$w/sharing-$mode.diff" || true) lines)"
	fi
	if "$MNTV2" verify --images "$w/img" --tree "$pid" >"$w/verify-$mode.txt" 2>&1; then
		result[$k.verify]=identical
	else
		result[$k.verify]=$(short_verify "$w/verify-$mode.txt")
	fi
	if diff "$w/host-mounts.txt" "$w/host-after-$mode.txt" >"$w/host-$mode.diff"; then
		result[$k.host]=same
	else
		result[$k.host]="lost $(grep -c '^<' "$w/host-$mode.diff" || true), gained $(grep -c '^>' "$w/host-$mode.diff" || true)"
		result[$k.hostdetail]="lost [$(diff_side '<' "$w/host-$mode.diff")] gained [$(diff_side '>' "$w/host-$mode.diff")]"
	fi
	"case_${f}_probes" >"$w/probes-$mode.txt" 2>>"$w/exec.log" || true
	if diff "$w/probes-before.txt" "$w/probes-$mode.txt" >/dev/null; then
		result[$k.probes]="as before"
	else
		result[$k.probes]="differ: $(paste -sd' ' "$w/probes-$mode.txt")"
	fi
	check_images "$mode"
	"${engine}_delete" "$mode"
	remove_conf
}

# check_images MODE: the restore left the images as they were (what mntv2
# rewrites: mountpoints-*.img, and its own mntv2-* files gone).
check_images() {
	local d
	d=$("${engine}_images") || d=
	if [ -z "$d" ] || [ ! -d "$d" ]; then
		[ "$engine" = podman ] || fail "$c ($1): the images directory is gone"
		return 0
	fi
	[ "$(img_digest "$d")" = "$sum" ] || fail "$c ($1): the restore changed the images ($d)"
}

# img_digest DIR: the mount images' bytes and the names of mntv2's files.
img_digest() { (cd "$1" && { ls mntv2-* 2>/dev/null || true; sha256sum mountpoints-*.img; }) | sha256sum | cut -c1-16; }

# run_case CASE: one case, start to end.
run_case() {
	c=$1 f=${1//-/_}
	w=$scratch/$c bundle=$scratch/$c/bundle name=mntv2-e2e-$$-$c hs=$scratch/$c/host/slave hp=$scratch/$c/host/shared
	local t0 ns mode
	t0=$(date +%s.%N)
	mkdir -p "$w/host" "$bundle"
	engine=runc MODES="alone mntv2"
	"case_${f}_setup"
	if [ -n "$CONF" ]; then write_conf "$CONF"; else remove_conf; fi
	if ! "${engine}_start"; then
		fail "$c: the container did not start: $start_error"
		return
	fi
	pid=$(ct_pid)
	if ! "case_${f}_started"; then
		fail "$c: the case's mounts failed (see $w/exec.log)"
		return
	fi
	"case_${f}_probes" >"$w/probes-before.txt"
	"$MNTV2" show --pid "$pid" --canonical >"$w/before.txt"
	cp "/proc/$pid/mountinfo" "$w/before.mountinfo"
	host_mounts >"$w/host-mounts.txt"
	if ! "${engine}_checkpoint"; then
		fail "$c: the checkpoint failed: $checkpoint_error"
		"${engine}_delete" checkpoint
		remove_conf
		return
	fi
	remove_conf
	sum=$(img_digest "$w/img")
	# verify of the capture before the checkpoint against the images: does
	# mntv2 read the images as the kernel had the tree?
	ns=$(find "$w/img" -name 'mountpoints-*.img' -printf '%f\n' | sed 's/^mountpoints-\([0-9]*\)\.img$/\1/' | sort -n | head -1)
	if "$MNTV2" verify --images "$w/img" --mountinfo "$w/before.mountinfo" --mntns "${ns:-0}" >"$w/verify-before.txt" 2>&1; then
		result[$c.before.verify]=identical
	else
		result[$c.before.verify]=$(short_verify "$w/verify-before.txt")
	fi
	# With host mounts below the volume sources, runc's restore unmounts them
	# (see runc/remount-hook.sh); the +remount restores put them back
	# before CRIU looks.
	modes[$c]=$MODES
	[ ! -s "$w/host-mounts.txt" ] || modes[$c]+=" alone+remount mntv2+remount"
	for mode in ${modes[$c]}; do
		restore_one "$mode"
	done
	verdict alone mntv2
	[[ " ${modes[$c]} " != *" mntv2+import "* ]] || verdict alone+import mntv2+import
	[ ! -s "$w/host-mounts.txt" ] || verdict alone+remount mntv2+remount
	result[$c.seconds]=$(since "$t0")
}

# verdict ALONE HOOK: the hook may not fail, nor be worse in sharing, where
# CRIU alone completes or is right.
verdict() {
	local a=$c.$1 m=$c.$2 v="$c ($2)"
	if [ "${result[$a.completes]}" = yes ] && [ "${result[$m.completes]}" != yes ]; then
		fail "$v: CRIU alone restores, CRIU + mntv2 fails: $(printf '%s' "${result[$m.mntv2err]:-${result[$m.completes]}}" | sed 's/\\n.*//' | cut -c1-300)"
	fi
	if [ "${result[$a.completes]}" = yes ] && [ "${result[$m.completes]}" = yes ]; then
		[ "${result[$a.sharing]}" != same ] || [ "${result[$m.sharing]}" = same ] ||
			fail "$v: sharing in the container differs from the capture with the hook, not with CRIU alone: $w/sharing-$2.diff"
		[ "${result[$a.probes]}" != "as before" ] || [ "${result[$m.probes]}" = "as before" ] ||
			fail "$v: propagation probes differ with the hook, not with CRIU alone: ${result[$m.probes]}"
		[ "${result[$a.host]}" != same ] || [ "${result[$m.host]}" = same ] ||
			fail "$v: the host's mounts below the volumes differ with the hook, not with CRIU alone: ${result[$m.host]}"
	fi
}

for c in "$@"; do
	run_case "$c"
done

# The table.
row() { printf '%-19s %-13s %-4s %-16s %-17s %-10s %-17s %s\n' "$@"; }
echo
echo "runc $(runc --version | awk '/^runc version/ { print $3 }'), CRIU $criu_version ($CRIU), scratch on $scratch_fs${diag:+, DIAGNOSIS RUN: MNTV2_${diag^^}=1, results do not count}"
row case restore "done" "tree vs before" "sharing vs before" probes "host mounts" "mntv2 verify"
for c in "$@"; do
	row "$c" "(capture)" - - - "$(awk '{ printf "%s%s", n++ ? "," : "", $2 }' "$scratch/$c/probes-before.txt" 2>/dev/null)" \
		"$({ wc -l <"$scratch/$c/host-mounts.txt"; } 2>/dev/null || echo 0)" "${result[$c.before.verify]:-n/a}"
	for mode in ${modes[$c]:-}; do
		k=$c.$mode
		done_cell=${result[$k.completes]:-n/a}
		[ "$done_cell" = yes ] || done_cell=NO
		probes=${result[$k.probes]:--}
		[ "${probes%%:*}" != differ ] || probes=$(awk '{ printf "%s%s", n++ ? "," : "", $2 }' "$scratch/$c/probes-$mode.txt")
		row "" "$mode" "$done_cell" "${result[$k.tree]:--}" "${result[$k.sharing]:--}" "$probes" "${result[$k.host]:--}" "${result[$k.verify]:--}"
	done
done

cat <<'EOF'
alone: CRIU alone (runc.conf without action-script); mntv2: CRIU + mntv2 as its action script.
+remount: the same with hack/runc/remount-hook.sh run first, which mounts again the host's
  submounts of the volume sources that runc's restore unmounts (a runc bug), before CRIU looks.
+import: podman container restore --import of the --export archive, as a new container id.
probes: the mounts a probe saw propagate (labels below); host mounts: those below the volume
  sources compared with the checkpoint's; verify: mntv2 verify --images --tree after the restore.
EOF

# indent_diff A B SAME: the lines of diff A B, indented; SAME when none.
indent_diff() {
	local d
	d=$(diff "$1" "$2" | grep '^[<>]' || true)
	if [ -n "$d" ]; then printf '%s\n' "$d" | sed 's/^/    /'; else echo "    $3"; fi
}

# The details: why restores failed, what differs, what runc changes.
for c in "$@"; do
	w=$scratch/$c
	echo
	echo "== $c (${result[$c.seconds]:-?} s)"
	for mode in ${modes[$c]:-}; do
		k=$c.$mode
		[ -n "${result[$k.completes]:-}" ] || continue
		if [ "${result[$k.completes]}" != yes ]; then
			echo "  $mode: restore ${result[$k.completes]}"
			[ -z "${result[$k.mntv2err]:-}" ] || printf '    mntv2: %s\n' "${result[$k.mntv2err]}" | sed 's/\\n/\n      /g'
			echo "    (CRIU's log: ${result[$k.crlog]}; mntv2's: $w/mntv2-$mode.log, when the environment reached it)"
			continue
		fi
		[ "${result[$k.probes]}" = "as before" ] || echo "  $mode: probes ($(awk '{ printf "%s%s", n++ ? " " : "", $1 }' "$w/probes-before.txt")): before [$(paste -sd' ' "$w/probes-before.txt")] after [$(paste -sd' ' "$w/probes-$mode.txt")]"
		[ "${result[$k.host]}" = same ] || echo "  $mode: host mounts below the volume sources: ${result[$k.hostdetail]}"
	done
	if [ -f "$w/after-alone.txt" ]; then
		echo "  what the CRIU-alone restore changed (runc and CRIU, no mntv2): before < > after"
		indent_diff "$w/before.txt" "$w/after-alone.txt" nothing
	fi
	if [ -f "$w/after-alone.txt" ] && [ -f "$w/after-mntv2.txt" ]; then
		echo "  CRIU alone < > CRIU + mntv2"
		indent_diff "$w/after-alone.txt" "$w/after-mntv2.txt" identical
	fi
	for v in before ${modes[$c]:-}; do
		[ -s "$w/verify-$v.txt" ] || continue
		grep -qx 'identical.*' "$w/verify-$v.txt" && continue
		echo "  verify ($v):"
		sed 's/^/    /' "$w/verify-$v.txt" | head -40
	done
done

t_total=$(since "$t_start")
echo
if [ "$failures" -gt 0 ]; then
	printf 'FAIL: %s\n' "${fail_lines[@]}"
	echo "e2e-runc: $failures failures in ${t_total}s"
	exit 1
fi
if [ -n "$diag" ]; then
	echo "e2e-runc: diagnosis run (MNTV2_${diag^^}=1) in ${t_total}s: results do not count"
	exit 3
fi
echo "e2e-runc: all passed in ${t_total}s"

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
# it from the same images with CRIU alone and with CRIU + mntv2 as the action
# script named in /etc/criu/runc.conf (strict mode), and in the variants
# below (+lenient, +remount, podman's +import). Each restore is
# compared with the capture: the whole tree, its sharing, mntv2 verify
# against the images, the host's mounts below the volume sources, and the
# probes again. runc.conf holds, besides action-script, what CRIU needs for
# propagated volumes (ext-mount-map auto, enable-external-masters,
# enable-external-sharing); the case's checkpoint and its CRIU-alone restore
# get the same file without action-script (no file at all where the case
# needs nothing). A pre-existing /etc/criu/runc.conf is put back at the end.
#
# What each restore with the hook must do (strict mode, the environment's
# MNTV2_LENIENT=0; podman's conmon passes no environment, and no
# /etc/mntv2/criu-hook.conf is there unless the script writes one):
#  - where CRIU alone's restore shows host mounts below the volume sources
#    lost (runc 1.1's restore unmounts them: it rbinds each volume source
#    and umount -l's it, which propagates to the host), the hook must
#    REFUSE the restore, its error (mntv2's log or CRIU's) saying that the
#    host mount is gone and naming the lost host path; then one more restore
#    with MNTV2_LENIENT=1 in /etc/mntv2/criu-hook.conf (written for it and
#    removed; a pre-existing file is kept aside for the whole run and put
#    back) must complete, with mntv2's "(lenient)" warning in its log and
#    the host's mounts as CRIU alone left them;
#  - every other restore (the "+remount" ones, where runc's damage is
#    undone before CRIU looks, and every case without host mounts below a
#    volume source) must complete with its sharing and the probes as in the
#    capture, and the host's mounts as at the checkpoint;
#  - every one that completes must be no worse than CRIU alone's: its tree
#    and its sharing CRIU alone's except where CRIU alone's differs from
#    the capture, and no probe wrong that is right with CRIU alone.
# It fails (exit 1) when one of these does not hold, when a restore changes
# the images, or when anything cannot run (a checkpoint, a container); it
# ends with a one-line summary. What runc changes on purpose (masked paths
# bound to the host's /dev/null, cgroup v1 roots) shows in the tree column
# of both restores and is listed per case.
#
# Everything runs in a private mount namespace of its own; runc keeps its
# state in the scratch directory, so only containers made here are ever
# deleted. Installs runc, busybox-static, jq, podman and iptables (CRIU's
# network lock) with apt-get when missing, without runc's recommended criu
# (Debian's criu 3.17 does not work on Linux 6.18).
#
# usage: hack/e2e-runc.sh [CASE...]      (default: every case)
# env:   CRIU    CRIU binary, at least 3.19 (default:
#                ../shared/tools/criu-4.2/criu beside the checkout)
#        MNTV2   mntv2 binary (default: bin/mntv2)
#        E2E_RUNC_TMP  where the scratch directory goes (default /var/tmp;
#                      the plain rootfs must be on a disk filesystem)
#        E2E_RUNC_DIAG lenient|disable: a diagnosis run with MNTV2_LENIENT=1
#                      or MNTV2_DISABLE=1 in the environment (never passes,
#                      exit 3; refused under CI)
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

# A pre-existing runc.conf is kept aside and put back; so is the lack of
# one. So is mntv2's configuration file: podman's conmon runs runc, and so
# CRIU and the hook, without this environment, so only that file could
# relax the hook; the lenient restores write it.
conf_saved=/etc/criu/runc.conf.mntv2-e2e-saved
hook_conf=/etc/mntv2/criu-hook.conf
hook_conf_saved=$hook_conf.mntv2-e2e-saved
for f in "$conf_saved" "$hook_conf_saved"; do
	if [ -e "$f" ]; then
		rmdir "$scratch"
		echo "e2e-runc: $f exists: an earlier run was interrupted; put it back as ${f%.mntv2-e2e-saved} first" >&2
		exit 2
	fi
done
criu_dir_made='' mntv2_dir_made=''
[ -d /etc/criu ] || criu_dir_made=1
[ -d /etc/mntv2 ] || mntv2_dir_made=1
[ ! -e /etc/criu/runc.conf ] || mv /etc/criu/runc.conf "$conf_saved"
[ ! -e "$hook_conf" ] || mv "$hook_conf" "$hook_conf_saved"

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
	rm -f "$hook_conf"
	if [ -e "$hook_conf_saved" ]; then
		mv "$hook_conf_saved" "$hook_conf"
	elif [ -n "$mntv2_dir_made" ]; then
		rmdir /etc/mntv2 2>/dev/null
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

# result[CASE.MODE.KEY]: the table's cells and what the checks found.
declare -A result=() modes=()

# diff_side '<'|'>' DIFF: the mountpoints of one side of a diff of
# host_mounts lists, on one line.
diff_side() { awk -v s="$1" '$1 == s { printf "%s%s", n++ ? " " : "", $2 }' "$2"; }

# short_verify FILE: verify's verdict for the table: its last line, without
# the images path.
short_verify() { tail -1 "$1" | sed 's|^mntv2: images [^ ]*: ||' | cut -c1-70; }

# ref_of MODE: the CRIU-alone restore a hook restore MODE is compared with
# (mntv2 and mntv2+lenient: alone; mntv2+remount: alone+remount; ...).
ref_of() {
	local m=${1%+lenient}
	echo "alone${m#mntv2}"
}

# restore_one MODE: restores the case's checkpoint (alone*: CRIU alone;
# mntv2*: CRIU + the hook; *+lenient: with MNTV2_LENIENT=1 from mntv2's
# configuration file) and fills result[$c.MODE.*].
restore_one() {
	local mode=$1 k="$c.$1" text=$CONF n lenient_env=$MNTV2_LENIENT
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
	case $mode in
	*+lenient)
		# The file, as where conmon passes no environment; an empty
		# MNTV2_LENIENT lets it decide.
		write_hook_conf "# written by hack/e2e-runc.sh for one restore
MNTV2_LENIENT=1
MNTV2_LOG=$MNTV2_LOG"
		export MNTV2_LENIENT=
		;;
	esac
	crlog=$w/rst-$mode/restore.log
	if ! "${engine}_restore" "$mode"; then
		result[$k.completes]="fails: $(firsterr "$crlog" 2>/dev/null | cut -c1-200)"
		result[$k.crlog]=$crlog
		# The hook's error: from its own log, else from CRIU's (podman's
		# conmon does not pass the environment on).
		result[$k.mntv2err]=$(cat "$MNTV2_LOG" "$crlog" 2>/dev/null | grep -m1 'level=ERROR.*err=' | sed 's/.* err=//' || true)
	else
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
		result[$k.nlost]=0
		if diff "$w/host-mounts.txt" "$w/host-after-$mode.txt" >"$w/host-$mode.diff"; then
			result[$k.host]=same
		else
			result[$k.nlost]=$(grep -c '^<' "$w/host-$mode.diff" || true)
			result[$k.lost]=$(diff_side '<' "$w/host-$mode.diff")
			result[$k.host]="lost ${result[$k.nlost]}, gained $(grep -c '^>' "$w/host-$mode.diff" || true)"
			result[$k.hostdetail]="lost [${result[$k.lost]}] gained [$(diff_side '>' "$w/host-$mode.diff")]"
		fi
		"case_${f}_probes" >"$w/probes-$mode.txt" 2>>"$w/exec.log" || true
		if diff "$w/probes-before.txt" "$w/probes-$mode.txt" >/dev/null; then
			result[$k.probes]="as before"
		else
			result[$k.probes]="differ: $(paste -sd' ' "$w/probes-$mode.txt")"
		fi
	fi
	check_images "$mode"
	"${engine}_delete" "$mode"
	remove_conf
	remove_hook_conf
	export MNTV2_LENIENT=$lenient_env
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
	local t0 ns mode r all
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
	all=$MODES
	[ ! -s "$w/host-mounts.txt" ] || all+=" alone+remount mntv2+remount"
	modes[$c]=
	for mode in $all; do
		case $mode in
		mntv2*)
			# Where CRIU alone's restore lost host mounts the images
			# share (runc's doing, undone in +remount), strict mode
			# must refuse; a lenient restore follows.
			r=$(ref_of "$mode")
			result[$c.$mode.expect]=complete
			if [[ $mode != *+remount ]] && [ "${result[$c.$r.nlost]:-0}" -gt 0 ]; then
				result[$c.$mode.expect]=refuse
			fi
			;;
		esac
		restore_one "$mode"
		modes[$c]+=" $mode"
		if [ "${result[$c.$mode.expect]:-}" = refuse ]; then
			result[$c.$mode+lenient.expect]=lenient
			restore_one "$mode+lenient"
			modes[$c]+=" $mode+lenient"
		fi
	done
	for mode in ${modes[$c]}; do
		[[ $mode != mntv2* ]] || judge "$mode"
	done
	result[$c.seconds]=$(since "$t0")
}

# Counts for the summary.
n_restores=0 n_strict=0 n_refused=0 n_lenient=0

# judge MODE: checks a hook restore against what it must do
# (result[$c.MODE.expect]: complete, refuse or lenient; the header says
# what each means) and against its CRIU-alone restore; sets
# result[$c.MODE.check] and fails the run for each expectation not met.
judge() {
	local h=$1 r k=$c.$1 rk want err p named='' unnamed='' got b o x worse
	local -a bad=()
	r=$(ref_of "$h") rk=$c.$(ref_of "$h") want=${result[$c.$1.expect]}
	case $want in
	refuse)
		if [ "${result[$k.completes]}" = yes ]; then
			bad+=("completed in strict mode, though runc's restore destroyed host mounts below the volume sources that the images share ([${result[$rk.lost]}] in $w/host): want a refusal naming them")
		else
			err=${result[$k.mntv2err]:-}
			if [ -z "$err" ]; then
				bad+=("the restore fails, but with no mntv2 error in its log or CRIU's: ${result[$k.completes]}")
			else
				[[ $err == *" is gone"* ]] || bad+=("mntv2's refusal does not say that the host mount is gone: $err")
				got=$(printf '%s\n' "$err" | grep -oE "$w/host/[^ ,;:\"\\]+" | sed "s|^$w/host/||" | LC_ALL=C sort -u || true)
				for p in ${result[$rk.lost]}; do
					if printf '%s\n' "$got" | grep -qxF "$p"; then named+=${named:+ }$p; else unnamed+=${unnamed:+ }$p; fi
				done
				result[$k.named]=$named result[$k.unnamed]=$unnamed
				[ -n "$named" ] || bad+=("mntv2's refusal names none of the lost host mounts [${result[$rk.lost]}] below $w/host: $err")
			fi
		fi
		;;
	lenient)
		if [ "${result[$k.completes]}" != yes ]; then
			bad+=("the lenient restore (MNTV2_LENIENT=1 in $hook_conf) fails: $(printf '%s' "${result[$k.mntv2err]:-${result[$k.completes]}}" | cut -c1-300)")
		else
			grep -E 'level=WARN.*\(lenient\)' "$w/mntv2-$h.log" 2>/dev/null | grep -q ' is gone' ||
				bad+=("no '(lenient)' warning of a host mount that is gone in $w/mntv2-$h.log")
			[ "${result[$rk.completes]}" != yes ] || cmp -s "$w/host-after-$r.txt" "$w/host-after-$h.txt" ||
				bad+=("the host's mounts below the volume sources differ from what CRIU alone's restore left: $(diff "$w/host-after-$r.txt" "$w/host-after-$h.txt" | grep '^[<>]' | paste -sd' ')")
		fi
		;;
	complete)
		if [ "${result[$k.completes]}" != yes ]; then
			bad+=("fails in strict mode: $(printf '%s' "${result[$k.mntv2err]:-${result[$k.completes]}}" | sed 's/\\n.*//' | cut -c1-300)")
		else
			[ "${result[$k.sharing]}" = same ] || bad+=("the sharing in the container differs from the capture: $(grep '^[<>]' "$w/sharing-$h.diff" | paste -sd' ' | cut -c1-300)")
			[ "${result[$k.probes]}" = "as before" ] || bad+=("the probes differ from the capture: before [$(paste -sd' ' "$w/probes-before.txt")] after [$(paste -sd' ' "$w/probes-$h.txt")]")
			[ "${result[$k.host]}" = same ] || bad+=("the host's mounts below the volume sources differ from the checkpoint's: ${result[$k.hostdetail]}")
		fi
		;;
	esac
	# No worse than CRIU alone, where both complete: the tree and the
	# sharing line by line, each probe.
	if [ "${result[$k.completes]}" = yes ] && [ "${result[$rk.completes]:-}" = yes ]; then
		read -r b o x < <(cmp3 "$w/before.txt" "$w/after-$r.txt" "$w/after-$h.txt" "$w/tree-worse-$h.txt")
		if [ $((b + o + x)) = 0 ]; then
			result[$k.vsalone]=identical
		else
			result[$k.vsalone]=$(printf '%s' "${b:+better $b}" | sed 's/^better 0$//')
			[ "$o" = 0 ] || result[$k.vsalone]+="${result[$k.vsalone]:+, }other $o"
			[ "$x" = 0 ] || result[$k.vsalone]+="${result[$k.vsalone]:+, }WORSE $x"
			[ "$x" = 0 ] || bad+=("its tree is worse than CRIU alone's in $x lines (key: capture | alone | mntv2): $(head -3 "$w/tree-worse-$h.txt" | sed 's/  */ /g' | paste -sd';' | cut -c1-400)")
		fi
		read -r b o x < <(cmp3 <(sharing_of "$w/before.txt") <(sharing_of "$w/after-$r.txt") <(sharing_of "$w/after-$h.txt") "$w/sharing-worse-$h.txt")
		[ "$x" = 0 ] || bad+=("its sharing is worse than CRIU alone's: $(sed 's/  */ /g' "$w/sharing-worse-$h.txt" | paste -sd';' | cut -c1-400)")
		worse=$(probes_worse "$w/probes-before.txt" "$w/probes-$r.txt" "$w/probes-$h.txt")
		[ -z "$worse" ] || bad+=("probes right with CRIU alone, wrong with the hook: $worse")
	elif [ "${result[$k.completes]}" = yes ]; then
		result[$k.vsalone]="n/a (alone fails)"
	fi
	if [ ${#bad[@]} -eq 0 ]; then
		result[$k.check]=ok
		case $want in
		complete) n_strict=$((n_strict + 1)) ;;
		refuse) n_refused=$((n_refused + 1)) ;;
		lenient) n_lenient=$((n_lenient + 1)) ;;
		esac
	else
		result[$k.check]=FAIL
		case $want in
		complete) want="must complete in strict mode" ;;
		refuse) want="must refuse in strict mode" ;;
		lenient) want="must complete with MNTV2_LENIENT=1" ;;
		esac
		for p in "${bad[@]}"; do
			fail "$c ($h, $want): $p"
		done
	fi
}

for c in "$@"; do
	run_case "$c"
done

# The table.
row() { printf '%-19s %-14s %-7s %-5s %-16s %-18s %-17s %-14s %-16s %s\n' "$@"; }
echo
echo "runc $(runc --version | awk '/^runc version/ { print $3 }'), CRIU $criu_version ($CRIU), scratch on $scratch_fs${diag:+, DIAGNOSIS RUN: MNTV2_${diag^^}=1, results do not count}"
row case restore "done" check "tree vs before" "tree vs alone" "sharing vs before" probes "host mounts" "mntv2 verify"
for c in "$@"; do
	row "$c" "(capture)" - - - - - "$(awk '{ printf "%s%s", n++ ? "," : "", $2 }' "$scratch/$c/probes-before.txt" 2>/dev/null)" \
		"$({ wc -l <"$scratch/$c/host-mounts.txt"; } 2>/dev/null || echo 0)" "${result[$c.before.verify]:-n/a}"
	for mode in ${modes[$c]:-}; do
		k=$c.$mode
		n_restores=$((n_restores + 1))
		done_cell=${result[$k.completes]:-n/a}
		if [ "$done_cell" != yes ] && [ "${result[$k.expect]:-}" = refuse ]; then
			printf '%-19s %-14s %-7s %-5s %s\n' "" "$mode" refused "${result[$k.check]:--}" \
				"host mount gone${result[$k.named]:+: names ${result[$k.named]}}${result[$k.unnamed]:+; also lost, not named: ${result[$k.unnamed]}}"
			continue
		fi
		[ "$done_cell" = yes ] || done_cell=NO
		probes=${result[$k.probes]:--}
		[ "${probes%%:*}" != differ ] || probes=$(awk '{ printf "%s%s", n++ ? "," : "", $2 }' "$scratch/$c/probes-$mode.txt")
		row "" "$mode" "$done_cell" "${result[$k.check]:--}" "${result[$k.tree]:--}" "${result[$k.vsalone]:--}" "${result[$k.sharing]:--}" "$probes" "${result[$k.host]:--}" "${result[$k.verify]:--}"
	done
done

cat <<'EOF2'
alone: CRIU alone (runc.conf without action-script); mntv2: CRIU + mntv2 as its action script,
  strict mode. check: ok when a hook restore does what it must (hack/e2e-runc.sh's header).
refused: where CRIU alone's restore lost host mounts below the volume sources (runc 1.1's restore
  unmounts the host's submounts of each volume source), strict mode must refuse, saying the host
  mount is gone; "names": the lost host paths its error names ("not named": the other lost ones).
+lenient: that restore again with MNTV2_LENIENT=1 in /etc/mntv2/criu-hook.conf: it must complete,
  warn "(lenient)" in mntv2's log, and be no worse than CRIU alone.
+remount: the same with hack/runc/remount-hook.sh run first, which mounts again the host's
  submounts of the volume sources that runc's restore unmounts (a runc bug), before CRIU looks.
+import: podman container restore --import of the --export archive, as a new container id.
tree vs alone: the lines where the hook's tree differs from CRIU alone's: better (the capture's
  where CRIU alone's is not), other (neither is the capture's), WORSE (CRIU alone's is).
probes: the mounts a probe saw propagate (labels below); host mounts: those below the volume
  sources compared with the checkpoint's; verify: mntv2 verify --images --tree after the restore.
EOF2

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
	echo "  probes: $(awk '{ printf "%s%s", n++ ? " " : "", $1 }' "$w/probes-before.txt" 2>/dev/null)"
	for mode in ${modes[$c]:-}; do
		k=$c.$mode
		[ -n "${result[$k.completes]:-}" ] || continue
		if [ "${result[$k.completes]}" != yes ]; then
			if [ "${result[$k.expect]:-}" = refuse ]; then
				echo "  $mode: refused, as it must be (the host lost [${result[$c.$(ref_of "$mode").lost]:-}] in runc's restore)"
			else
				echo "  $mode: restore ${result[$k.completes]}"
			fi
			[ -z "${result[$k.mntv2err]:-}" ] || printf '    mntv2: %s\n' "${result[$k.mntv2err]}" | sed 's/\\n/\n      /g'
			echo "    (CRIU's log: ${result[$k.crlog]}; mntv2's: $w/mntv2-$mode.log, when the environment reached it)"
			continue
		fi
		if [ "${result[$k.expect]:-}" = lenient ]; then
			echo "  $mode: mntv2's warnings of the lenient restore:"
			grep -E 'level=WARN.*\(lenient\)' "$w/mntv2-$mode.log" 2>/dev/null | sed 's/^.* msg=/    /' | cut -c1-400 || true
		fi
		[ "${result[$k.probes]}" = "as before" ] || echo "  $mode: probes: before [$(paste -sd' ' "$w/probes-before.txt")] after [$(paste -sd' ' "$w/probes-$mode.txt")]"
		[ "${result[$k.host]}" = same ] || echo "  $mode: host mounts below the volume sources: ${result[$k.hostdetail]}"
		[ ! -s "$w/tree-worse-$mode.txt" ] || { echo "  $mode: worse than CRIU alone (key: capture | alone | mntv2):"; sed 's/^/    /' "$w/tree-worse-$mode.txt"; }
	done
	if [ -f "$w/after-alone.txt" ]; then
		echo "  what the CRIU-alone restore changed (runc and CRIU, no mntv2): before < > after"
		indent_diff "$w/before.txt" "$w/after-alone.txt" nothing
	fi
	same=
	for mode in ${modes[$c]:-}; do
		[[ $mode == mntv2* ]] || continue
		r=$(ref_of "$mode")
		if [ ! -f "$w/after-$r.txt" ] || [ ! -f "$w/after-$mode.txt" ]; then continue; fi
		if cmp -s "$w/after-$r.txt" "$w/after-$mode.txt"; then
			same+=" $mode"
		else
			echo "  CRIU alone ($r) < > CRIU + mntv2 ($mode)"
			indent_diff "$w/after-$r.txt" "$w/after-$mode.txt" identical
		fi
	done
	[ -z "$same" ] || echo "  the tree of CRIU + mntv2 is CRIU alone's in:$same"
	for v in before ${modes[$c]:-}; do
		[ -s "$w/verify-$v.txt" ] || continue
		grep -qx 'identical.*' "$w/verify-$v.txt" && continue
		echo "  verify ($v):"
		sed 's/^/    /' "$w/verify-$v.txt" | head -40
	done
done

t_total=$(since "$t_start")
summary="$# cases, $n_restores restores in ${t_total}s: $n_strict hook restores complete in strict mode as in the images, $n_refused refused as required (host mounts gone: runc's restore unmounted them), $n_lenient complete with MNTV2_LENIENT=1"
echo
[ "$failures" -eq 0 ] || printf 'FAIL: %s\n' "${fail_lines[@]}"
if [ -n "$diag" ]; then
	echo "e2e-runc: diagnosis run (MNTV2_${diag^^}=1), results do not count: $failures failures; $summary"
	exit 3
fi
if [ "$failures" -gt 0 ]; then
	echo "e2e-runc: FAIL: $failures failures; $summary"
	exit 1
fi
echo "e2e-runc: PASS: $summary"

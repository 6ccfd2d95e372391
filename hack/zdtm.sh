#!/usr/bin/env bash
# CRIU's own test suite (zdtm) on mntv2: the mount tests, CRIU alone and
# with mntv2 as its action script.
#
# Builds CRIU 4.2 from its source tarball in ZDTM_DIR (a directory on the
# normal disk, not tmpfs: zdtm runs the tests from that checkout, so every
# test's root mount is a bind of ext4, as in real containers), then runs
# each test of hack/zdtm/tests.txt in the flavors ns and uns in four
# configurations:
#   criu/v2        CRIU alone, mount-v2 (CRIU's default)
#   criu/compat    CRIU alone, --mntns-compat-mode (zdtm's option)
#   mntv2/v2       CRIU + mntv2 (--action-script, added to `restore` only
#   mntv2/compat     by the --criu-bin wrapper hack/zdtm/criu-wrapper.sh)
# A test's own .desc options win over the mode (a few force one).
#
# Prints the table (pass, FAIL, skip; "-": zdtm has no such flavor for the
# test), a summary, and every (test, flavor, mode) where CRIU + mntv2 does
# worse than CRIU alone with mntv2's error line; writes the same to
# ZDTM_OUT. Failing runs' zdtm images and logs (dump.log, restore.log with
# mntv2's stderr, mntv2's own log) are kept in ZDTM_LOGS.
#
# Exit status: 0 when CRIU + mntv2 passes wherever CRIU alone passes (tests
# CRIU alone fails are reported only); 1 when it does worse, or, with
# CI=true, when a listed test was skipped; 2 when the harness itself failed
# (build, wrapper not used).
#
# A build directory already built is reused (re-runs take only the tests);
# a different tarball is unpacked afresh. Runs as root, in a private mount
# namespace of its own: the host's mounts are never touched.
#
# usage: hack/zdtm.sh [TEST...]   (default: every test of hack/zdtm/tests.txt)
# env:   MNTV2         mntv2 binary (default: bin/mntv2 of this repository)
#        CRIU_SRC      CRIU 4.2 source tarball (default: ../shared/tools/criu-4.2/criu-4.2-src.tar.gz)
#        ZDTM_DIR      build and run directory (default: /var/tmp/mntv2-zdtm)
#        ZDTM_OUT      the results file (default: $ZDTM_DIR/results.txt)
#        ZDTM_LOGS     logs (default: $ZDTM_DIR/logs; emptied first): zdtm's output per
#                      invocation, the wrapper's log, mntv2's log of every hook run, and
#                      CONFIG/FLAVOR/TEST/ (images, dump.log, restore.log) of failing runs
#        ZDTM_FLAVORS  default "ns uns"
#        ZDTM_CONFIGS  default "criu-v2 criu-compat mntv2-v2 mntv2-compat"
#        ZDTM_TIMEOUT  seconds for one zdtm invocation (default 1200)
#        MNTV2_LOG_LEVEL  mntv2's log level in the hook runs (default info)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
if [ "${MNTV2_ZDTM_INNER:-}" != 1 ]; then
	exec unshare --mount --propagation private env MNTV2_ZDTM_INNER=1 "$0" "$@"
fi

start=$SECONDS
note() { printf 'zdtm: %s\n' "$*" >&2; }
die() {
	note "$*"
	exit 2
}
[ "$(id -u)" = 0 ] || die "must run as root"

# zdtm.py and the test helpers it starts (#!/usr/bin/env python3) need
# Debian's python3, which has the protobuf and yaml modules.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
PY=/usr/bin/python3

MNTV2=${MNTV2:-$top/bin/mntv2}
[ -x "$MNTV2" ] || die "$MNTV2 is missing: run make build (or set MNTV2)"
MNTV2=$(cd "$(dirname "$MNTV2")" && pwd)/$(basename "$MNTV2")
CRIU_SRC=${CRIU_SRC:-$(cd "$top/.." && pwd)/shared/tools/criu-4.2/criu-4.2-src.tar.gz}
[ -r "$CRIU_SRC" ] || die "CRIU source tarball $CRIU_SRC is missing (set CRIU_SRC)"
ZDTM_DIR=${ZDTM_DIR:-/var/tmp/mntv2-zdtm}
mkdir -p "$ZDTM_DIR"
ZDTM_DIR=$(cd "$ZDTM_DIR" && pwd)
ZDTM_OUT=${ZDTM_OUT:-$ZDTM_DIR/results.txt}
mkdir -p "$(dirname "$ZDTM_OUT")"
ZDTM_LOGS=${ZDTM_LOGS:-$ZDTM_DIR/logs}
read -r -a flavors <<<"${ZDTM_FLAVORS:-ns uns}"
read -r -a configs <<<"${ZDTM_CONFIGS:-criu-v2 criu-compat mntv2-v2 mntv2-compat}"
timeout_s=${ZDTM_TIMEOUT:-1200}
export MNTV2_LOG_LEVEL=${MNTV2_LOG_LEVEL:-info}
case $(stat -f -c %T "$ZDTM_DIR") in
tmpfs | ramfs) die "ZDTM_DIR $ZDTM_DIR is on tmpfs: use a directory on the normal disk" ;;
esac

if [ $# -gt 0 ]; then
	tests=("$@")
else
	mapfile -t tests < <(sed 's/#.*//' "$here/zdtm/tests.txt" | awk 'NF { print $1 }')
fi
[ ${#tests[@]} -gt 0 ] || die "no tests"

declare -A took=()
phase_start=$SECONDS
phase_end() {
	took[$1]=$((SECONDS - phase_start))
	note "$1: $((SECONDS - phase_start)) s"
	phase_start=$SECONDS
}

# --- 1. build dependencies --------------------------------------------------
deps=(build-essential libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
	python3-protobuf libnl-3-dev libnet1-dev libcap-dev pkg-config libbsd-dev libgnutls28-dev
	libnftables-dev uuid-dev libdrm-dev python3-yaml iproute2 e2fsprogs)
missing=()
for p in "${deps[@]}"; do
	dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q ' installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	note "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt=(apt-get -y -q -o DPkg::Lock::Timeout=600)
	"${apt[@]}" install "${missing[@]}" >"$ZDTM_DIR/apt.log" 2>&1 ||
		{ "${apt[@]}" update >>"$ZDTM_DIR/apt.log" 2>&1 && "${apt[@]}" install "${missing[@]}" >>"$ZDTM_DIR/apt.log" 2>&1; } ||
		die "apt-get install failed, see $ZDTM_DIR/apt.log"
fi
phase_end deps

# --- 2. CRIU and the tests --------------------------------------------------
src=$ZDTM_DIR/criu-4.2
sum=$(sha256sum "$CRIU_SRC" | cut -d' ' -f1)
if [ "$(cat "$ZDTM_DIR/src.sha256" 2>/dev/null)" != "$sum" ] || [ ! -f "$src/Makefile" ]; then
	note "unpacking $CRIU_SRC into $src"
	rm -rf --one-file-system "$src" "$ZDTM_DIR/src.sha256"
	tar -xzf "$CRIU_SRC" -C "$ZDTM_DIR"
	[ -f "$src/Makefile" ] || die "$CRIU_SRC did not unpack into $src"
	echo "$sum" >"$ZDTM_DIR/src.sha256"
fi
build() {
	note "make $*"
	make -C "$src" "$@" >>"$ZDTM_DIR/build.log" 2>&1 || {
		tail -30 "$ZDTM_DIR/build.log" >&2
		die "make $* failed, see $ZDTM_DIR/build.log"
	}
}
: >"$ZDTM_DIR/build.log"
build -j2 criu
build -j2 lib # pycriu, which zdtm.py imports
build -j2 -C test/zdtm/lib
build -j2 -C test/zdtm/static "${tests[@]}"
criu=$src/criu/criu
phase_end build

# --- 3. the runs ------------------------------------------------------------
run=$ZDTM_DIR/run
tmp=$ZDTM_DIR/tmp
loopdev=
cleanup() {
	# zdtm's mounts are this private namespace's; none must keep rm
	# from staying on this file system.
	awk -v d="$ZDTM_DIR/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
		while read -r m; do umount -l "$m" 2>/dev/null || true; done
	[ -z "$loopdev" ] || losetup -d "$loopdev" 2>/dev/null || true
	rm -rf --one-file-system "$run" "$tmp" "$src/test/dump" "$ZDTM_DIR/ext-dev.img"
}
trap cleanup EXIT
cleanup
rm -rf --one-file-system "$ZDTM_LOGS"
mkdir -p "$run" "$tmp" "$ZDTM_LOGS"
export TMPDIR=$tmp # zdtm makes its test roots there

# mnt_ext_dev mounts an external block device with ext4.
for t in "${tests[@]}"; do
	[ "$t" = mnt_ext_dev ] || continue
	truncate -s 64M "$ZDTM_DIR/ext-dev.img"
	mkfs.ext4 -q -F "$ZDTM_DIR/ext-dev.img"
	loopdev=$(losetup --find --show "$ZDTM_DIR/ext-dev.img") || die "losetup failed"
	export ZDTM_MNT_EXT_DEV=$loopdev
done

# mnt_tracefs binds /sys/kernel/debug (tracefs under debugfs): mount
# debugfs there in this private namespace when the host has none.
for t in "${tests[@]}"; do
	if [ "$t" = mnt_tracefs ] && [ ! -e /sys/kernel/debug/tracing/README ]; then
		mount -t debugfs debugfs /sys/kernel/debug || die "cannot mount debugfs for mnt_tracefs"
	fi
done

export ZDTM_REAL_CRIU=$criu
wrapper=$here/zdtm/criu-wrapper.sh
declare -A res=()   # res[test|flavor|config] = pass FAIL skip -
declare -A why=()   # why[test|flavor|config] = zdtm's skip reason
declare -A failat=() # failat[test|flavor|config] = zdtm's "FAIL at ..." of a failing run
declare -A did=()    # did[test|flavor|config] = r (mntv2 rewrote the images), v (only verified)
warns=()
harness_errors=0
targs=()
for t in "${tests[@]}"; do targs+=(-t "zdtm/static/$t"); done

# has_flavor TEST FLAVOR, has_flag TEST FLAG: from the test's .desc.
desc_field() {
	grep -a -o "'$2' *: *['\"][^'\"]*" "$src/test/zdtm/static/$1.desc" 2>/dev/null | head -n1 | sed "s/.*: *['\"]//"
}
has_flavor() {
	local f
	f=$(desc_field "$1" flavor)
	case " ${f:-h ns uns} " in *" $2 "*) return 0 ;; esac
	return 1
}
has_flag() {
	case " $(desc_field "$1" flags) " in *" $2 "*) return 0 ;; esac
	return 1
}

# run_zdtm CONFIG FLAVOR: one zdtm invocation for every test.
run_zdtm() {
	local config=$1 flavor=$2 zopts=() hook=
	case $config in
	criu-v2) ;;
	criu-compat) zopts=(--mntns-compat-mode) ;;
	mntv2-v2) hook=$MNTV2 ;;
	mntv2-compat) zopts=(--mntns-compat-mode) hook=$MNTV2 ;;
	*) die "unknown configuration $config" ;;
	esac
	local id=$config-$flavor rep=$run/report-$config-$flavor mlog=$run/mntv2-$config-$flavor
	local wlog=$ZDTM_LOGS/wrapper-$id.log out=$ZDTM_LOGS/zdtm-$id.out
	rm -rf --one-file-system "$src/test/dump" "$rep"
	mkdir -p "$mlog"
	: >"$wlog"
	local t0=$SECONDS rc=0
	(cd "$src/test" && ZDTM_HOOK=$hook ZDTM_WRAPPER_LOG=$wlog ZDTM_MNTV2_LOGDIR=$mlog \
		timeout --kill-after=30 "$timeout_s" "$PY" zdtm.py run "${targs[@]}" -f "$flavor" \
		--keep-going --ignore-taint --keep-img always --report "$rep" --criu-bin "$wrapper" "${zopts[@]}") >"$out" 2>&1 || rc=$?
	if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
		note "$id: zdtm timed out after $timeout_s s"
	fi
	took[$id]=$((SECONDS - t0))

	local line name cell
	for t in "${tests[@]}"; do res[$t|$flavor|$config]=FAIL; done # no line: FAIL
	while IFS= read -r line; do
		case $line in
		"ok "* | "not ok "*) ;;
		*) continue ;;
		esac
		name=${line#* - zdtm/static/}
		name=${name%% *}
		case $line in
		*"# SKIP no flavors"*) cell=- ;;
		*"# SKIP"*)
			cell=skip
			why[$name|$flavor|$config]=${line#*# SKIP }
			;;
		"ok "*) cell=pass ;;
		*) cell=FAIL ;;
		esac
		res[$name|$flavor|$config]=$cell
	done < <(cat "$rep"/*.tap 2>/dev/null)

	local n=0 sect=$run/section
	for t in "${tests[@]}"; do
		cell=${res[$t|$flavor|$config]}
		# zdtm reports a failed .checkskip before it looks at flavors.
		if [ "$cell" = skip ] && ! has_flavor "$t" "$flavor"; then
			cell=-
			res[$t|$flavor|$config]=-
		fi
		case $cell in - | skip) continue ;; esac
		n=$((n + 1))
		# The wrapper must have run CRIU for the test, and with the
		# hook, mntv2 must have logged its pre-restore.
		if ! grep -q "^dump $t " "$wlog"; then
			note "$id $t: the wrapper was not used for the dump"
			harness_errors=$((harness_errors + 1))
		fi
		local restored=
		! grep -q "^restore $t " "$wlog" || restored=1
		if [ -n "$hook" ] && [ -n "$restored" ] && ! grep -q 'pre-restore' "$mlog/$t.log" 2>/dev/null; then
			note "$id $t: CRIU restored without mntv2 logging its pre-restore"
			harness_errors=$((harness_errors + 1))
		fi
		# The test's part of zdtm's output, up to its PASS or FAIL banner.
		awk -v a="Run zdtm/static/$t in $flavor " -v b="Test zdtm/static/$t " \
			'index($0, a) { on = 1 } on { print } on && index($0, b) { exit }' "$out" >"$sect"
		local at=
		if [ "$cell" = FAIL ]; then
			# zdtm's "Test zdtm/static/NAME FAIL at CRIU restore" banner.
			at=$(grep -a -m1 -o "Test zdtm/static/$t FAIL[^#]*" "$sect" | sed "s|Test zdtm/static/$t FAIL *||; s| *\$||" || true)
		fi
		# A crfail test expects CRIU to refuse it; zdtm then calls a
		# refused dump or restore a pass and a good restore a failure
		# ("unexpected success"). Here a good restore is a pass, a
		# failed one a FAIL; a refused dump (the hook never ran) stays a
		# pass.
		if has_flag "$t" crfail; then
			if [ "$cell" = FAIL ] && [ "$at" = "at unexpected success" ]; then
				cell=pass
			elif [ "$cell" = pass ] && [ -n "$restored" ]; then
				cell=FAIL
				at="at CRIU restore (crfail: zdtm counts this as the expected failure)"
			fi
			res[$t|$flavor|$config]=$cell
		fi
		if [ "$cell" = FAIL ]; then
			failat[$t|$flavor|$config]=$at
			local keep=$ZDTM_LOGS/$config/$flavor/$t
			mkdir -p "$keep"
			[ ! -d "$src/test/dump/zdtm/static/$t" ] || cp -a "$src/test/dump/zdtm/static/$t/." "$keep/"
			[ ! -f "$mlog/$t.log" ] || cp "$mlog/$t.log" "$keep/mntv2.log"
			cp "$sect" "$keep/zdtm.out"
		fi
		# What mntv2 did: rewrote the images and made the sharing
		# itself (r), or found no sharing and only verified (v);
		# warnings are differences it found and did not abort for.
		if [ -n "$hook" ] && [ -f "$mlog/$t.log" ]; then
			if grep -q 'images rewritten without sharing' "$mlog/$t.log"; then
				did[$t|$flavor|$config]=r
			elif grep -q 'nothing to rewrite' "$mlog/$t.log"; then
				did[$t|$flavor|$config]=v
			fi
			local w
			w=$(grep -a 'level=WARN' "$mlog/$t.log" | grep -v 'no rewrite of the images was recorded' |
				sed 's/^time=[^ ]* //' | cut -c1-400 | head -n3 || true)
			[ -z "$w" ] || warns+=("$t $flavor $config ($cell): $w")
		fi
	done
	mkdir -p "$ZDTM_LOGS/mntv2-log"
	[ -z "$hook" ] || cp -a "$mlog" "$ZDTM_LOGS/mntv2-log/$id"
	note "$id: $n tests ran in ${took[$id]} s (zdtm exit $rc)"
	[ "$n" -gt 0 ] || {
		note "$id: no test ran, see $out"
		harness_errors=$((harness_errors + 1))
	}
}

for flavor in "${flavors[@]}"; do
	for config in "${configs[@]}"; do
		run_zdtm "$config" "$flavor"
	done
done
phase_end runs

# --- 4. the table -----------------------------------------------------------
cell() { printf '%s' "${res[$1|$2|$3]:--}"; }
# first_line FILE PATTERN: the first line of FILE matching PATTERN (but
# the RLIMIT_NOFILE error CRIU logs in every zdtm run and the bare exit
# status of a child), trimmed.
first_line() {
	{ grep -a -E "$2" "$1" 2>/dev/null | grep -a -v -E 'RLIMIT_NOFILE|util.c:[0-9]+\): exited, status' |
		head -n1 | cut -c1-400; } || true
}
declare -A npass=() nruns=() nfail=() nskip=() ndid=()
worse=()
skips=()
{
	printf '%-32s %-6s %-12s %-12s %-12s %-12s %s\n' test flavor criu/v2 criu/compat mntv2/v2 mntv2/compat note
	for t in "${tests[@]}"; do
		desc=$src/test/zdtm/static/$t.desc
		forced=
		if grep -q -- '--no-mntns-compat-mode' "$desc" 2>/dev/null; then
			forced="(.desc: mount-v2 only)"
		elif grep -q -- '--mntns-compat-mode' "$desc" 2>/dev/null; then
			forced="(.desc: compat only)"
		fi
		! has_flag "$t" crfail || forced="${forced:+$forced }(crfail)"
		for flavor in "${flavors[@]}"; do
			row=()
			any=
			for config in criu-v2 criu-compat mntv2-v2 mntv2-compat; do
				c=$(cell "$t" "$flavor" "$config")
				d=${did[$t|$flavor|$config]:-}
				row+=("$c${d:+/$d}")
				[ -z "$d" ] || ndid[$config-$d]=$((${ndid[$config-$d]:-0} + 1))
				[ "$c" = - ] && continue
				any=1
				nruns[$config]=$((${nruns[$config]:-0} + 1))
				case $c in
				pass) npass[$config]=$((${npass[$config]:-0} + 1)) ;;
				skip)
					nskip[$config]=$((${nskip[$config]:-0} + 1))
					skips+=("$t $flavor $config: ${why[$t|$flavor|$config]:-}")
					;;
				*) nfail[$config]=$((${nfail[$config]:-0} + 1)) ;;
				esac
			done
			[ -n "$any" ] || continue
			printf '%-32s %-6s %-12s %-12s %-12s %-12s %s\n' "$t" "$flavor" "${row[@]}" "$forced"
			for mode in v2 compat; do
				if [ "$(cell "$t" "$flavor" "criu-$mode")" = pass ] &&
					[ "$(cell "$t" "$flavor" "mntv2-$mode")" != pass ] &&
					[ "$(cell "$t" "$flavor" "mntv2-$mode")" != - ]; then
					worse+=("$t|$flavor|$mode")
				fi
			done
		done
	done
	echo
	echo "pass: zdtm's checks passed; -: the test has no such flavor; (crfail): the test expects CRIU to"
	echo "refuse it: pass = dump refused (restore never ran) or restored and checked, FAIL = restore failed"
	echo "mntv2 cells: /r = mntv2 rewrote the images and restored the sharing itself, /v = the images"
	echo "have no sharing: CRIU restored every mount and mntv2 only verified"
	echo
	for config in "${configs[@]}"; do
		printf '%-13s pass %3d of %3d runs, FAIL %3d, skip %3d\n' "$config" "${npass[$config]:-0}" \
			"${nruns[$config]:-0}" "${nfail[$config]:-0}" "${nskip[$config]:-0}"
	done
	for config in mntv2-v2 mntv2-compat; do
		case " ${configs[*]} " in *" $config "*) ;; *) continue ;; esac
		printf '%-13s mntv2 rewrote the images in %d restores, only verified in %d\n' "$config" \
			"${ndid[$config-r]:-0}" "${ndid[$config-v]:-0}"
	done
	for s in "${skips[@]}"; do echo "skipped: $s"; done
	echo "mntv2 warnings (differences it reported without aborting): ${#warns[@]} runs"
	for w in "${warns[@]}"; do echo "  $w"; done
	echo "CRIU + mntv2 worse than CRIU alone: ${#worse[@]} (test, flavor, mode)"
	for w in "${worse[@]}"; do
		IFS='|' read -r t flavor mode <<<"$w"
		d=$ZDTM_LOGS/mntv2-$mode/$flavor/$t
		rlog=$(find "$d" -name restore.log 2>/dev/null | head -1)
		echo "WORSE $t $flavor $mode: zdtm: FAIL ${failat[$t|$flavor|mntv2-$mode]:-?}; logs in $d"
		m=$(first_line "$d/mntv2.log" 'level=(ERROR|WARN)')
		[ -n "$m" ] || { [ -z "$rlog" ] || m=$(first_line "$rlog" 'level=(ERROR|WARN)'); }
		echo "  mntv2: ${m:-(no mntv2 error line)}"
		[ -z "$rlog" ] || echo "  criu:  $(first_line "$rlog" 'Error \(')"
	done
	echo
	printf 'time: deps %d s, build %d s, runs %d s' "${took[deps]}" "${took[build]}" "${took[runs]}"
	for flavor in "${flavors[@]}"; do
		for config in "${configs[@]}"; do printf ', %s %d s' "$config-$flavor" "${took[$config-$flavor]}"; done
	done
	printf '; total %d s\n' $((SECONDS - start))
	echo "logs: $ZDTM_LOGS (failing runs in CONFIG/FLAVOR/TEST/)"
} >"$ZDTM_OUT"
cat "$ZDTM_OUT"

if [ "$harness_errors" -gt 0 ]; then
	note "$harness_errors harness errors (see above)"
	exit 2
fi
if [ ${#worse[@]} -gt 0 ]; then
	exit 1
fi
if [ "${CI:-}" = true ] && [ ${#skips[@]} -gt 0 ]; then
	note "CI: ${#skips[@]} runs were skipped; a listed test must run here"
	exit 1
fi

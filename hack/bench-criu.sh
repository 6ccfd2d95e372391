#!/usr/bin/env bash
# The whole `criu restore` of real containers, three ways: CRIU alone,
# CRIU + the mntv2 hook in reduce-and-complete mode (MNTV2_REDUCE=1, the
# default) and in strip-and-reapply mode (MNTV2_REDUCE=0); mntv2 restore of
# the same images beside them. The containers (hack/lib/ct.sh):
#   base       no mounts beyond the container's own (the baseline)
#   tmp-N      N peer binds of a shared tmpfs under the container's /tmp
#   root-N     the same on directories of the container's root (/mnt/pN)
#   mixed      peer groups, master chains and a nested mount namespace
#              whose mounts are peers of the first's, with mounts that
#              propagated into both
#   open-1000  tmp-1000 whose task holds a file open in every 10th bind
# Each time is the best of R wall-clock runs, the ways interleaved
# (restore -d --pidfile; the restored tree is killed after each run,
# untimed). Two more ways restore through go-criu's RPC (criu swrk), as
# runc and containerd do, with hack/rpc-restore: CRIU alone, and CRIU with
# mntv2's Notify (reduce). Each container is dumped with mntv2 as the
# dump's action script, as a host whose CRIU configuration names it does
# (at post-dump it records what the images lose and prepares the rewrite,
# plugin/prepared.go); CRIU alone ignores those files. The bench runs in a
# private mount namespace with a tmpfs on /run: CRIU keeps its kernel
# feature probes (criu.kdat) only on a tmpfs /run, which every systemd host
# has and this machine does not (without it each criu run probes again,
# about 25 ms; BENCH_CRIU_KDAT=0 measures that way). Every post-restore writes its report (MNTV2_REPORT); for each
# container the best one is set against the syscall floor of what it did
# (hack/bench -post-floor, in this run). Writes JSON for hack/bench, which
# prints the tables (ms and ratios, and the mounts' share: each time minus
# the base container's) and plots them.
#
# usage: CRIU=/path/to/criu hack/bench-criu.sh OUT.json [N...]   (default 1000 5000 10000)
# env:   BENCH_CRIU_RUNS      runs of containers below 5000 binds (default 10)
#        BENCH_CRIU_BIG_RUNS  runs of containers of 5000 binds and more (default 3)
#        BENCH_CRIU_SHAPES    containers to measure besides base (default "tmp root mixed open")
#        BENCH_CRIU_KDAT      0: no tmpfs on /run (CRIU probes the kernel at every run)
#        MNTV2, MNTV2_BENCH, MNTV2_RPC   the binaries (default bin/mntv2, bin/mntv2-bench,
#                             bin/rpc-restore; built when missing)
#        BENCH_CRIU_KEEP      a directory: each container's images are copied to DIR/NAME (to profile with)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
if [ "${MNTV2_BENCH_INNER:-}" != 1 ]; then
	exec unshare --mount --propagation private env MNTV2_BENCH_INNER=1 "$0" "$@"
fi
t_start=$EPOCHREALTIME
kdat=${BENCH_CRIU_KDAT:-1}
if [ "$kdat" = 1 ]; then
	mount -t tmpfs -o size=4m,mode=755 bench-run /run
fi
out=$1
shift
[ $# -gt 0 ] || set -- 1000 5000 10000
CRIU=$(command -v "${CRIU:-criu}")
MNTV2=${MNTV2:-$top/bin/mntv2}
BENCH=${MNTV2_BENCH:-$top/bin/mntv2-bench}
RPC=${MNTV2_RPC:-$top/bin/rpc-restore}
[ -x "$MNTV2" ] || (cd "$top" && go build -o "$MNTV2" ./cmd/mntv2)
[ -x "$BENCH" ] || (cd "$top" && go build -o "$BENCH" ./hack/bench)
[ -x "$RPC" ] || (cd "$top" && go build -o "$RPC" ./hack/rpc-restore)
export MNTV2
# shellcheck source=lib/ct.sh
. "$here/lib/ct.sh"
scratch=$(mktemp -d /tmp/mntv2-bench-criu.XXXXXX)
# The containers' roots are mounts of this private namespace: unmount
# them, then remove the images and work files.
trap 'unmount_below "$scratch"; rm -rf "$scratch"' EXIT
runs_small=${BENCH_CRIU_RUNS:-10}
runs_big=${BENCH_CRIU_BIG_RUNS:-3}
shapes=${BENCH_CRIU_SHAPES:-tmp root mixed open}

say() { echo "bench-criu: $*" >&2; }

# us: microseconds since the epoch, without a fork.
us() { local t=$EPOCHREALTIME; echo $((10#${t/./})); }

# The scenario's helper: binds SRC PREFIX FROM TO makes the directories
# PREFIX<i> and binds SRC on each, i from FROM to TO; with the host's
# python3 (the container sees the host's /usr) in one process, else with
# mount(8).
binds_fn() {
	cat <<'EOF'
binds() {
	if [ -x /usr/bin/python3 ]; then
		/usr/bin/python3 - "$@" <<'PY'
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
src, prefix, a, b = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for i in range(a, b + 1):
    t = prefix + str(i)
    os.mkdir(t)
    if libc.mount(src.encode(), t.encode(), None, 4096, None) != 0:  # MS_BIND
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), t)
PY
	else
		for i in $(seq "$3" "$4"); do mkdir "$2$i"; mount --bind "$1" "$2$i"; done
	fi
}
EOF
}

# scenario SHAPE N: the container's scenario.sh (run in the container
# before the dump; see lib/ct-init.sh).
scenario() {
	local shape=$1 n=$2
	binds_fn
	case $shape in
	base) ;;
	tmp | open)
		echo 'mkdir -p /tmp/p0; mount -t tmpfs pt /tmp/p0; mount --make-shared /tmp/p0'
		echo "binds /tmp/p0 /tmp/p 1 $((n - 1))"
		if [ "$shape" = open ]; then
			# A task holding a file open in every 10th bind (fds from 10
			# up): CRIU must restore those binds itself.
			echo 'echo held >/tmp/p0/f'
			echo "bash -c 'for i in \$(seq 0 10 $((n - 1))); do exec {fd}</tmp/p\$i/f; done; touch /tmp/.held; exec sleep 1000001' </dev/null >/dev/null 2>&1 &"
			echo 'while [ ! -e /tmp/.held ]; do sleep 0.01; done; rm /tmp/.held'
		fi
		;;
	root)
		echo 'mkdir -p /mnt/p0; mount -t tmpfs pt /mnt/p0; mount --make-shared /mnt/p0'
		echo "binds /mnt/p0 /mnt/p 1 $((n - 1))"
		;;
	mixed)
		cat <<'EOF'
# Four peer groups of 100.
for g in 1 2 3 4; do
	mkdir -p /tmp/g$g/p0; mount -t tmpfs g$g /tmp/g$g/p0; mount --make-shared /tmp/g$g/p0
	binds /tmp/g$g/p0 /tmp/g$g/p 1 99
done
# Five master chains of 20: each link a slave of the one before, and shared.
for c in 1 2 3 4 5; do
	mkdir -p /tmp/c$c/m0; mount -t tmpfs c$c /tmp/c$c/m0; mount --make-shared /tmp/c$c/m0
	for i in $(seq 1 19); do
		mkdir /tmp/c$c/m$i; mount --bind /tmp/c$c/m$((i - 1)) /tmp/c$c/m$i
		mount --make-slave /tmp/c$c/m$i; mount --make-shared /tmp/c$c/m$i
	done
done
# A nested mount namespace: a copy of all of the above, its mounts peers
# (and slaves) of the first's.
unshare -m --propagation unchanged bash -c 'mkdir -p /tmp/nested-only; mount -t tmpfs nested /tmp/nested-only; touch /tmp/.nested; exec sleep 1000002' </dev/null >/dev/null 2>&1 &
while [ ! -e /tmp/.nested ]; do sleep 0.01; done; rm /tmp/.nested
# Mounts made afterwards propagate to every peer of both namespaces, and
# down the chains.
mkdir /tmp/g1/p0/late /tmp/g2/p0/late /tmp/c1/m0/late /tmp/c2/m0/late
mount -t tmpfs late1 /tmp/g1/p0/late; mount -t tmpfs late2 /tmp/g2/p0/late
mount -t tmpfs late3 /tmp/c1/m0/late; mount -t tmpfs late4 /tmp/c2/m0/late
EOF
		;;
	*)
		say "unknown shape $shape"
		return 1
		;;
	esac
}

# end_tree PID: kills a restored tree by its root's pid and waits until
# the root is dead: gone, or a zombie (its mounts and its pid namespace's
# tasks are gone then; reaping is its parent's, here the machine's init,
# which may take a second or more).
end_tree() {
	local pid=$1 st i
	kill -9 "$pid" 2>/dev/null || true
	for i in $(seq 1000); do
		{ read -r st </proc/"$pid"/stat; } 2>/dev/null || return 0
		st=${st##*) }
		[ "${st%% *}" != Z ] || return 0
		[ "$i" -lt 1000 ] || break
		sleep 0.01
	done
	say "$name: the restored task $pid did not die"
	return 1
}

# restore_once WAY RUN: one whole criu restore, WAY criu, reduce or strip
# (the command line), rpc-criu or rpc-mntv2 (go-criu RPC); sets took (us).
# The restored tree is killed afterwards, untimed; on the first run mntv2
# verify compares it with the images (verdict[WAY]).
declare -A verdict
restore_once() {
	local way=$1 run=$2 t0 t1 pid
	local args=("${common[@]}")
	case $way in
	reduce | strip) args+=(--action-script "$MNTV2") ;;
	rpc-*)
		args=("$RPC" --criu "$CRIU" --images "$w/img" --root "$w/root" --work "$w/work" --pidfile "$pidf" --log-level 2)
		[ "$way" = rpc-mntv2 ] || args+=(--mntv2=false)
		;;
	esac
	[ "${args[0]}" = "$RPC" ] || args=("$CRIU" "${args[@]}")
	local reduce=1
	[ "$way" = strip ] && reduce=0
	rm -f "$pidf" "$w/rep-$way-$run.json"
	t0=$EPOCHREALTIME
	if ! MNTV2_REDUCE=$reduce MNTV2_REPORT=$w/rep-$way-$run.json "${args[@]}" >/dev/null 2>"$w/err"; then
		t1=$EPOCHREALTIME
		say "$name: criu restore ($way) failed: $(firsterr "$w/work/restore.log" 2>/dev/null) $(tail -3 "$w/err")"
		return 1
	fi
	t1=$EPOCHREALTIME
	took=$((10#${t1/./} - 10#${t0/./}))
	pid=$(cat "$pidf") || { say "$name: criu restore ($way) left no pidfile"; return 1; }
	live=$pid
	if [ "$run" = 1 ]; then
		if "$MNTV2" verify --images "$w/img" --tree "$pid" >"$w/verify-$way.txt" 2>&1; then
			verdict[$way]=identical
		else
			verdict[$way]="differs($(grep -vc '^differ\|^identical' "$w/verify-$way.txt" || true))"
			say "$name ($way): the restored mounts differ from the images: $(head -3 "$w/verify-$way.txt" | tr '\n' ' ')"
		fi
	fi
	end_tree "$pid" && live=
}

# hook_actions WAY: restores once more with the hook (WAY reduce or
# strip) and CRIU's log at -v4, and sets acts to JSON: the seconds CRIU waited
# for the pre-restore and post-restore actions: from its "Running ACTION
# scripts" line to its next line (the restored tasks' lines apart, which
# CRIU's log prefixes with their pid), and post-restore's own time (its
# log line, which CRIU copies into its log).
hook_actions() {
	local way=$1 reduce=1 pid
	[ "$way" = strip ] && reduce=0
	rm -f "$pidf"
	MNTV2_REDUCE=$reduce "$CRIU" "${common[@]}" -v4 -o restore-v4-$way.log --action-script "$MNTV2" >/dev/null 2>"$w/err" ||
		{ say "$name: criu restore -v4 ($way) failed: $(firsterr "$w/work/restore-v4-$way.log" 2>/dev/null)"; return 1; }
	pid=$(cat "$pidf") || return 1
	live=$pid
	end_tree "$pid" || return 1
	live=
	acts=$(awk '
		/msg="mounts restored and verified"/ && match($0, / seconds=[0-9.]+/) { work = substr($0, RSTART + 9, RLENGTH - 9) + 0 }
		!match($0, /^\([0-9]+\.[0-9]+\)/) { next }
		{ ts = substr($0, 2, RLENGTH - 2) + 0 }
		/^\([0-9.]+\) +[0-9]+: / { next }
		pending != "" && $0 !~ /^\([0-9.]+\) \t\[/ { d[pending] = ts - start; pending = "" }
		/ Running (pre|post)-restore scripts$/ { pending = $3; start = ts }
		END { printf "{\"pre_restore_s\":%.6f,\"post_restore_s\":%.6f,\"post_restore_work_s\":%.6f}", d["pre-restore"], d["post-restore"], work }' "$w/work/restore-v4-$way.log")
}

# measure NAME SHAPE N: builds and dumps the container, restores it;
# prints its JSON row.
measure() {
	name=$1
	local shape=$2 n=$3 runs=$runs_small
	[ "$n" -lt 5000 ] || runs=$runs_big
	w=$scratch/$name
	mkdir -p "$w/scen"
	scenario "$shape" "$n" >"$w/scen/scenario.sh"
	local t0
	# This runs in a subshell of its own: whatever it leaves running when
	# it ends (a failure) is killed, the container or a restored tree.
	ct='' live=''
	trap '[ -z "$ct" ] || kill -9 "$ct" 2>/dev/null; [ -z "$live" ] || end_tree "$live"' EXIT
	t0=$(us)
	ct=$(CT_READY_SECONDS=600 start_ct "$w" "$w/scen") || { say "the $name container did not start"; return 1; }
	if grep -q . "$w/root/scenario.log" 2>/dev/null; then
		say "$name: the scenario said: $(head -3 "$w/root/scenario.log" | tr '\n' ' ')"
		grep -q 'scenario failed' "$w/root/scenario.log" && return 1
	fi
	local built=$(($(us) - t0))
	t0=$(us)
	"$CRIU" dump -t "$ct" -D "$w/img" -W "$w/work" -o dump.log --ext-mount-map auto --action-script "$MNTV2" >/dev/null 2>&1 ||
		{ say "$name: dump failed: $(firsterr "$w/work/dump.log" 2>/dev/null)"; return 1; }
	ct= # CRIU killed it
	local dumped=$(($(us) - t0))
	pidf=$w/work/pid
	common=(restore -d -D "$w/img" -W "$w/work" --root "$w/root" --ext-mount-map auto --pidfile "$pidf" -o restore.log)
	local -A best=()
	local i way t1
	t0=$(us)
	for i in $(seq "$runs"); do
		for way in criu reduce strip rpc-criu rpc-mntv2; do
			restore_once "$way" "$i" || return 1
			if [ -z "${best[$way]:-}" ] || [ "$took" -lt "${best[$way]}" ]; then best[$way]=$took; fi
		done
	done
	for i in $(seq "$runs"); do
		t1=$EPOCHREALTIME
		"$MNTV2" restore --images "$w/img" --root "$w/root" --ext-mount-map auto --pin-dir "$w/pins" >/dev/null 2>"$w/err" ||
			{ say "$name: mntv2 restore failed: $(tail -3 "$w/err")"; return 1; }
		took=$((10#${EPOCHREALTIME/./} - 10#${t1/./}))
		if [ -z "${best[mntv2]:-}" ] || [ "$took" -lt "${best[mntv2]}" ]; then best[mntv2]=$took; fi
		"$MNTV2" release --pin-dir "$w/pins" >/dev/null 2>&1
	done
	local restored=$(($(us) - t0))
	# One more run of each hook mode, untimed, with CRIU's log at -v4:
	# how long CRIU waited for the hook's pre-restore and post-restore.
	local acts_reduce acts_strip
	hook_actions reduce || return 1
	acts_reduce=$acts
	hook_actions strip || return 1
	acts_strip=$acts
	# Post-restore's best run of each mode against the syscall floor of
	# what it did, with these images.
	local pr ps
	pr=$("$BENCH" -post-floor "$w/img" "$w"/rep-reduce-*.json) || { say "$name: post-restore floor (reduce) failed"; return 1; }
	ps=$("$BENCH" -post-floor "$w/img" "$w"/rep-strip-*.json) || { say "$name: post-restore floor (strip) failed"; return 1; }
	say "$name: best of $runs: CRIU $((best[criu] / 1000)) ms, CRIU + mntv2 reduce $((best[reduce] / 1000)) ms, strip $((best[strip] / 1000)) ms; RPC: CRIU $((${best[rpc-criu]} / 1000)) ms, + mntv2 $((${best[rpc-mntv2]} / 1000)) ms; mntv2 restore $((best[mntv2] / 1000)) ms (built in $((built / 1000000)) s, dumped in $((dumped / 1000000)) s, restored in $((restored / 1000000)) s)"
	printf '{"name":"%s","shape":"%s","n":%d,"runs":%d,"criu_s":%s,"reduce_s":%s,"strip_s":%s,"rpc_criu_s":%s,"rpc_mntv2_s":%s,"mntv2_s":%s,' \
		"$name" "$shape" "$n" "$runs" "$(secs "${best[criu]}")" "$(secs "${best[reduce]}")" "$(secs "${best[strip]}")" \
		"$(secs "${best[rpc-criu]}")" "$(secs "${best[rpc-mntv2]}")" "$(secs "${best[mntv2]}")"
	printf '"verify":{"criu":"%s","reduce":"%s","strip":"%s","rpc-criu":"%s","rpc-mntv2":"%s"},"build_s":%s,"dump_s":%s,"restores_s":%s,"post_reduce":%s,"post_strip":%s,"actions_reduce":%s,"actions_strip":%s}' \
		"${verdict[criu]}" "${verdict[reduce]}" "${verdict[strip]}" "${verdict[rpc-criu]}" "${verdict[rpc-mntv2]}" "$(secs "$built")" "$(secs "$dumped")" "$(secs "$restored")" "$pr" "$ps" "$acts_reduce" "$acts_strip"
	# This container is done: its root and images go.
	if [ -n "${BENCH_CRIU_KEEP:-}" ]; then
		mkdir -p "$BENCH_CRIU_KEEP" && rm -rf "${BENCH_CRIU_KEEP:?}/$name" && cp -a "$w/img" "$BENCH_CRIU_KEEP/$name" && cp "$w"/rep-*.json "$w"/work/restore-v4*.log "$BENCH_CRIU_KEEP/$name/" 2>/dev/null || true
	fi
	unmount_below "$w"
	rm -rf "$w"
}

secs() { awk -v u="$1" 'BEGIN { printf "%.6f", u / 1e6 }'; }

rows=()
rows+=("$(measure base base 0)") || exit 1
for shape in $shapes; do
	case $shape in
	tmp | root)
		for n in "$@"; do rows+=("$(measure "$shape-$n" "$shape" "$n")") || exit 1; done
		;;
	mixed) rows+=("$(measure mixed mixed 0)") || exit 1 ;;
	open) rows+=("$(measure open-1000 open 1000)") || exit 1 ;;
	*)
		say "unknown shape $shape"
		exit 1
		;;
	esac
done
total=$((10#${EPOCHREALTIME/./} - 10#${t_start/./}))
say "done in $((total / 1000000)) s"
(
	IFS=,
	printf '{"criu":"%s","criu_version":"%s","kdat_cache":%s,"runs":%d,"big_runs":%d,"total_s":%s,"rows":[%s]}\n' "$CRIU" \
		"$("$CRIU" --version | awk '/^Version/ { print $2 }')" "$([ "$kdat" = 1 ] && echo true || echo false)" "$runs_small" "$runs_big" "$(secs "$total")" "${rows[*]}"
) >"$out"

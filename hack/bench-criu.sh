#!/usr/bin/env bash
# Restore time of N peer bind mounts with CRIU alone, CRIU + the mntv2
# hook, and mntv2 restore of the same images. Each time is the best of
# $BENCH_CRIU_RUNS (default 10) wall-clock runs minus the same for a
# container with no extra mounts, so only the mounts' share is left.
# Writes JSON (for hack/bench).
#
# usage: CRIU=/path/to/criu hack/bench-criu.sh OUT.json [N...]   (default 1000 5000)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
if [ "${MNTV2_BENCH_INNER:-}" != 1 ]; then
	exec unshare --mount --propagation private env MNTV2_BENCH_INNER=1 "$0" "$@"
fi
out=$1
shift
[ $# -gt 0 ] || set -- 1000 5000
CRIU=$(command -v "${CRIU:-criu}")
MNTV2=${MNTV2:-$top/bin/mntv2}
export MNTV2
# shellcheck source=lib/ct.sh
. "$here/lib/ct.sh"
scratch=$(mktemp -d /tmp/mntv2-bench-criu.XXXXXX)
# The containers' roots are mounts of this private namespace: unmount
# them, then remove the images and work files.
trap 'unmount_below "$scratch"; rm -rf "$scratch"' EXIT
runs=${BENCH_CRIU_RUNS:-10}

now() { date +%s%N; }

# best CMD...: the best wall time of $runs runs, in ns; after each run,
# untimed, the restored tree (pidfile $pidf) is killed and $after runs.
best() {
	local best= t0 t1 i
	for i in $(seq "$runs"); do
		rm -f "$pidf"
		t0=$(now)
		"$@" >/dev/null 2>"$scratch/err" || { echo "bench-criu: failed: $*: $(tail -3 "$scratch/err")" >&2; return 1; }
		t1=$(now)
		[ -s "$pidf" ] && kill_tree "$(cat "$pidf")"
		[ -z "${after:-}" ] || $after >/dev/null 2>&1
		if [ -z "$best" ] || [ $((t1 - t0)) -lt "$best" ]; then best=$((t1 - t0)); fi
	done
	echo "$best"
}

# measure NAME N: dumps a container with N peer binds, prints "criu hook mntv2" in ns.
measure() {
	local name=$1 n=$2 w=$scratch/$1
	mkdir -p "$w/scen"
	{
		echo 'mkdir -p /tmp/p0; mount -t tmpfs pt /tmp/p0; mount --make-shared /tmp/p0'
		echo "for i in \$(seq 1 $((n - 1))); do mkdir /tmp/p\$i; mount --bind /tmp/p0 /tmp/p\$i; done"
	} >"$w/scen/scenario.sh"
	[ "$n" -gt 0 ] || : >"$w/scen/scenario.sh"
	local ct
	ct=$(CT_READY_SECONDS=300 start_ct "$w" "$w/scen") || { echo "bench-criu: the $n-mount container did not start" >&2; exit 1; }
	"$CRIU" dump -t "$ct" -D "$w/img" -W "$w/work" -o dump.log --ext-mount-map auto >/dev/null 2>&1 ||
		{ echo "bench-criu: dump failed: $(firsterr "$w/work/dump.log")" >&2; exit 1; }
	pidf=$w/work/pid
	local common=(restore -d -D "$w/img" -W "$w/work" --root "$w/root" --ext-mount-map auto --pidfile "$pidf" -o restore.log)
	local c h m
	c=$(best "$CRIU" "${common[@]}")
	h=$(best "$CRIU" "${common[@]}" --action-script "$MNTV2")
	pidf=$w/work/none
	after="$MNTV2 release --pin-dir $w/pins"
	m=$(best "$MNTV2" restore --images "$w/img" --root "$w/root" --ext-mount-map auto --pin-dir "$w/pins")
	after=
	echo "$c $h $m"
}

base=$(measure base 0) || exit 1
read -r bc bh bm <<<"$base"
rows=()
for n in "$@"; do
	res=$(measure "peers$n" "$n") || exit 1
	read -r c h m <<<"$res"
	rows+=("$(awk -v n="$n" -v c=$((c - bc)) -v h=$((h - bh)) -v m=$((m - bm)) \
		'BEGIN { printf "{\"n\":%d,\"criu_s\":%.6f,\"criu_mntv2_s\":%.6f,\"mntv2_s\":%.6f}", n, c/1e9, h/1e9, m/1e9 }')")
	echo "bench-criu: $n peers: CRIU $(((c - bc) / 1000000)) ms, CRIU + mntv2 $(((h - bh) / 1000000)) ms, mntv2 restore $(((m - bm) / 1000000)) ms ($(awk -v c=$((c - bc)) -v m=$((m - bm)) 'BEGIN { printf "%.1f", c / m }')x)" >&2
done
(IFS=,; echo "[${rows[*]}]") >"$out"

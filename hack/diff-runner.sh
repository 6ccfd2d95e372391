#!/usr/bin/env bash
# Differential runner: random mount trees (hack/randtree) restored by CRIU
# alone and by mntv2, compared.
#
# For every seed it generates a scenario (go run ./hack/randtree -seed N),
# builds the e2e container with it (hack/lib/ct.sh start_ct: a tmpfs root
# with the host's /bin /lib /usr /etc binds, proc, a tmpfs /dev and /tmp),
# captures every namespace (mntv2 show --tree PID --canonical), checkpoints
# it with criu dump (--ext-mount-map auto --enable-external-sharing
# --enable-external-masters), then restores it seven ways:
#   criu/v2        CRIU alone, mount-v2
#   criu/compat    CRIU alone, --mntns-compat-mode
#   mntv2          mntv2 restore standalone (--root: the container's root,
#                  the same directory CRIU restores onto; captured with
#                  show --pin-dir, released after)
#   hook/v2        CRIU + mntv2 (--action-script; reduce and complete, the
#                  default), mount-v2
#   hook/compat    the same, --mntns-compat-mode
#   strip/v2, strip/compat: CRIU + mntv2 with MNTV2_REDUCE=0 (strip and
#                  reapply)
# Each result is identical, wrong(N) (N lines of the capture differ), fails
# or hangs, compared with the capture before the dump. A mntv2 mode is
# "worse than CRIU" when it is not identical where CRIU alone in the same
# CRIU mode was (for the standalone restore: in either CRIU mode), "better"
# when it is identical where CRIU alone was not.
#
# Prints one row per seed (with its seconds) and a summary, writes the table
# to DIFF_OUT too, then the classes of the results that are not identical
# (per mode: how many, how many worse than CRIU, the smallest example) and
# each such result with its reason (the mntv2 or CRIU error, or the first
# difference); keeps the work directory of every seed where a mntv2 mode is
# not identical (and says where), and exits 1 when any seed is worse than
# CRIU or could not be run (the container did not start). A seed CRIU
# cannot dump is reported and counted, not compared; the "ops" column
# counts the scenario's operations that failed (each is guarded, so the
# scenario still ran).
#
# Everything runs in a private mount namespace of its own: the host's mounts
# are never touched. Only pids this script started (or CRIU restored for it)
# are ever killed.
#
# usage: hack/diff-runner.sh [SEED|SCENARIO_DIR...]
#   no seeds: the CI set (seeds 1..50 and testdata/e2e/*-random-*, the
#   failures kept as scenarios); SEEDS=N: N seeds from SEED_START;
#   a directory with a scenario.sh (and maybe host.sh, as testdata/e2e/*)
#   runs that scenario instead of a generated one
# env:   CRIU (default: criu on PATH), MNTV2 (default: bin/mntv2),
#        DIFF_MODES (default: all seven, criu-v2 criu-compat mntv2 hook-v2
#        hook-compat strip-v2 strip-compat; empty: build and dump only),
#        SEEDS, SEED_START (default 1; "random" picks one and prints it),
#        DIFF_OUT (default bin/diff-runner.txt), DIFF_KEEP=1 keeps every
#        seed's work directory, MAX_MOUNTS (randtree -max-mounts, default 40),
#        RANDTREE_FLAGS (more randtree flags, e.g. -no-strictatime),
#        DIFF_TIMEOUT (seconds a dump or restore may take before it is
#        killed, with every process below it, and counted as "hangs"; 20)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
if [ "${MNTV2_DIFF_INNER:-}" != 1 ]; then
	exec unshare --mount --propagation private env MNTV2_DIFF_INNER=1 "$0" "$@"
fi

CRIU=${CRIU:-criu}
MNTV2=${MNTV2:-$top/bin/mntv2}
CRIU=$(command -v "$CRIU") || { echo "diff-runner: CRIU not found (set CRIU=/path/to/criu)" >&2; exit 2; }
[ -x "$MNTV2" ] || { echo "diff-runner: $MNTV2 is missing: run make build" >&2; exit 2; }
MNTV2=$(cd "$(dirname "$MNTV2")" && pwd)/$(basename "$MNTV2")
export MNTV2
export MNTV2_LOG_LEVEL=${MNTV2_LOG_LEVEL:-info}
DIFF_OUT=${DIFF_OUT:-$top/bin/diff-runner.txt}
MAX_MOUNTS=${MAX_MOUNTS:-40}
DIFF_TIMEOUT=${DIFF_TIMEOUT:-20}

if [ $# -eq 0 ]; then
	if [ -n "${SEEDS:-}" ]; then
		start=${SEED_START:-1}
		if [ "$start" = random ]; then
			start=$((RANDOM * 32768 + RANDOM + 1))
			echo "diff-runner: SEED_START=$start"
		fi
		set -- $(seq "$start" $((start + SEEDS - 1)))
	else
		set -- $(seq 1 50) "$top"/testdata/e2e/*-random-*/
	fi
fi

scratch=$(mktemp -d /tmp/mntv2-diff.XXXXXX)
mkdir -p "$(dirname "$DIFF_OUT")"
: >"$DIFF_OUT"

# shellcheck source=lib/ct.sh
. "$here/lib/ct.sh"

# The container or restored tree running now: ended whatever way this
# script ends.
live=
trap '[ -z "$live" ] || end_tree "$live"' EXIT

(cd "$top" && go build -o "$scratch/randtree" ./hack/randtree)

out() { printf '%s\n' "$*" | tee -a "$DIFF_OUT"; }

# end_tree PID: kill_tree of lib/ct.sh, but done as soon as the tree's root
# is dead: a zombie has left its namespaces (exit_task_namespaces runs
# before a task becomes a zombie); the host's init reaps it later. Waiting
# for the reap took 1.5 s a tree here, most of a seed's time.
end_tree() {
	local pid=$1 stat state
	[ -n "$pid" ] || return 0
	kill -9 "$pid" 2>/dev/null || true
	for _ in $(seq 500); do
		stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 0
		state=${stat##*) }
		case ${state%% *} in '' | Z | X) return 0 ;; esac
		sleep 0.01
	done
}

# descendants PID: every process below PID.
descendants() {
	local c
	# shellcheck disable=SC2013
	for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
		echo "$c"
		descendants "$c"
	done
}

# bounded CMD...: runs CMD for at most DIFF_TIMEOUT seconds; then kills it
# and every process below it (all started by this script) and returns 124.
bounded() {
	local pid dog which='' rc=0
	"$@" &
	pid=$!
	sleep "$DIFF_TIMEOUT" &
	dog=$!
	wait -n -p which "$pid" "$dog" || rc=$?
	if [ "$which" = "$dog" ]; then
		[ -z "${on_timeout:-}" ] || eval "$on_timeout"
		# shellcheck disable=SC2046
		kill -9 $(descendants "$pid") "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		return 124
	fi
	kill "$dog" 2>/dev/null || true
	wait "$dog" 2>/dev/null || true
	return "$rc"
}

# nsnames FILE: numbers the namespaces of a capture by order of appearance
# (show --tree already does; show --pin-dir gives the images' ids).
nsnames() {
	awk '/^mount namespace [0-9]+:/ { id = $3; sub(":", "", id); n[id] = ++k; $3 = k ":" }
		/^  group / {
			line = " "
			for (i = 1; i <= NF; i++) {
				t = $i
				if (match(t, /^[0-9]+:\//) && (substr(t, 1, RLENGTH - 2) in n))
					t = n[substr(t, 1, RLENGTH - 2)] substr(t, RLENGTH - 1)
				line = line " " t
			}
			print line
			next
		}
		{ print }' "$1" >"$1.tmp" && mv "$1.tmp" "$1"
}

# compare FILE: sets cell from the capture FILE against before.txt.
compare() {
	nsnames "$1"
	if diff -q "$w/before.txt" "$1" >/dev/null; then
		cell=identical
	else
		local lost extra
		lost=$(diff "$w/before.txt" "$1" | grep -c '^<' || true)
		extra=$(diff "$w/before.txt" "$1" | grep -c '^>' || true)
		cell="wrong($((lost > extra ? lost : extra)))"
		why="differs: $(diff "$w/before.txt" "$1" | difference || true)"
	fi
}

# difference: the first difference in a diff of two captures, in words:
# the mount and what changed (flags added and removed), else the line.
difference() {
	awk '/^< / && !a && !/^< mount namespace/ { a = substr($0, 3) } /^> / && !b && !/^> mount namespace/ { b = substr($0, 3) }
		END {
			na = split(a, x, " "); nb = split(b, y, " ")
			if (na < 2 || nb < 2 || x[2] != y[2] || na != nb || a ~ /^ *group/) {
				if (a != "") print "lost: " a; else print "extra: " b
				exit
			}
			out = x[2] ":"
			for (i = 3; i <= na; i++) {
				if (x[i] == y[i]) continue
				if (x[i] ~ /,/ || y[i] ~ /,/) {
					delete f
					n = split(x[i], p, ","); for (j = 1; j <= n; j++) f[p[j]] += 1
					n = split(y[i], p, ","); for (j = 1; j <= n; j++) f[p[j]] -= 1
					for (k in f) if (f[k] > 0) out = out " -" k; else if (f[k] < 0) out = out " +" k
				} else out = out " " x[i] " -> " y[i]
			}
			print out
		}' || true
}

# mntv2_error FILE: the first line of an error message of mntv2's (the err=
# of its log's ERROR record, or the first difference it names).
mntv2_error() {
	grep -h -m1 'level=ERROR' "$@" 2>/dev/null | sed -n 's/.* err="\(.*\)"$/\1/p' |
		awk '{ n = split($0, l, /\\n/); if (n > 1 && l[1] ~ /ways:$/) print l[1] " " l[2]; else print l[1] }' || true
}

# class TEXT: a failure's class: its reason without numbers, paths and
# flag lists.
class() {
	sed -E 's#mntv2#mntv@#g; s#/proc/[0-9]+/fd/[0-9]+#IMAGES#g; s#\([0-9. ]+\) *([0-9]+: )?##; s#flags: expected [^ ]*strictatime, found [^ ]*#flags: expected ...,strictatime, found no atime flag#;
		s#(^|[ ("])/[^ ,:()"]*#\1PATH#g; s#[0-9]+#N#g; s#mntv@#mntv2#g' <<<"$1" | cut -c1-200
}

# criu_restore MODE WITH: CRIU alone or with mntv2's hook; sets cell.
criu_restore() {
	local mode=$1 with=$2 rpid
	local args=(restore -d -D "$w/img" -W "$w/work" --root "$w/root" --ext-mount-map auto
		--pidfile "$w/work/pid" -o "restore-$mode-$with.log" -v4)
	[ "$mode" = compat ] && args+=(--mntns-compat-mode)
	[ "$with" = alone ] || args+=(--action-script "$MNTV2")
	local reduce=1
	[ "$with" != strip ] || reduce=0
	rm -f "$w/work/pid"
	local log=$w/work/mntv2-$mode-$with.log rc=0
	# On a hang, what mntv2 would say of the images as pre-restore left them.
	local on_timeout=
	# shellcheck disable=SC2016
	[ "$with" = alone ] || on_timeout='"$MNTV2" show --images "$w/img" >/dev/null 2>"$w/work/images-at-timeout-$mode.txt" || true'
	MNTV2_REDUCE=$reduce MNTV2_LOG=$log bounded "$CRIU" "${args[@]}" >/dev/null 2>&1 || rc=$?
	if [ "$rc" != 0 ]; then
		cell=fails
		why=
		if [ "$rc" = 124 ]; then
			cell=hangs
			why="criu restore did not end in ${DIFF_TIMEOUT}s (killed)"
			if [ -s "$w/work/images-at-timeout-$mode.txt" ]; then
				why="$why; the images pre-restore wrote: $(head -1 "$w/work/images-at-timeout-$mode.txt")"
			fi
		fi
		[ "$with" = alone ] || [ -n "$why" ] || why=$(mntv2_error "$log")
		[ -n "$why" ] || why="criu: $(firsterr "$w/work/restore-$mode-$with.log" || true)"
		# The hook's watcher puts the original images back after CRIU
		# exits: wait for it before the images are compared.
		for _ in $(seq 100); do
			[ -e "$w/img/mntv2-manifest.json" ] || break
			sleep 0.05
		done
		return
	fi
	rpid=$(cat "$w/work/pid")
	live=$rpid
	"$MNTV2" show --tree "$rpid" --canonical >"$w/after-$mode-$with.txt" 2>&1 || true
	compare "$w/after-$mode-$with.txt"
	"$MNTV2" verify --images "$w/img" --tree "$rpid" >"$w/verify-$mode-$with.txt" 2>&1 || true
	end_tree "$rpid"
	live=
}

# standalone: mntv2 restore onto the container's root; sets cell.
standalone() {
	local pins=$w/pins
	rm -rf "$pins"
	mkdir -p "$pins"
	if ! bounded "$MNTV2" restore --images "$w/img" --root "$w/root" --ext-mount-map auto --pin-dir "$pins" \
		--log-level info >"$w/work/mntv2-restore.log" 2>&1; then
		cell=fails
		why=$(grep -m1 '^mntv2: ' "$w/work/mntv2-restore.log" || tail -1 "$w/work/mntv2-restore.log" || true)
		return
	fi
	"$MNTV2" show --pin-dir "$pins" --canonical >"$w/after-standalone.txt" 2>&1 || true
	compare "$w/after-standalone.txt"
	"$MNTV2" verify --images "$w/img" --pin-dir "$pins" >"$w/verify-standalone.txt" 2>&1 || true
	"$MNTV2" release --pin-dir "$pins" >>"$w/work/mntv2-restore.log" 2>&1 || cell="$cell,release-fails"
}

all_modes=(criu-v2 criu-compat mntv2 hook-v2 hook-compat strip-v2 strip-compat)
read -r -a modes <<<"${DIFF_MODES-${all_modes[*]}}"
declare -A count=()
worse=0 better=0 broken=0 dumpfails=0 seeds=0 total_secs=0 opfails=0
declare -a kept=() worse_list=() broken_list=() opseeds=()

fmt='%-6s %-6s %-3s %-4s %-14s %-14s %-14s %-14s %-14s %-14s %-14s %5s %s'
# shellcheck disable=SC2059
out "$(printf "$fmt" seed mounts ns ops criu/v2 criu/compat mntv2 hook/v2 hook/compat strip/v2 strip/compat secs note)"
for seed in "$@"; do
	t0=$(date +%s.%N)
	seeds=$((seeds + 1))
	if [ -f "$seed/scenario.sh" ]; then
		# A scenario directory (a seed kept in testdata/e2e, a reduced case).
		sdir=${seed%/}
		seed=$(basename "$sdir")
		w=$scratch/$seed
		mkdir -p "$w"
	else
		w=$scratch/seed-$seed
		sdir=$w/scenario
		mkdir -p "$sdir"
		# shellcheck disable=SC2086
		"$scratch/randtree" -seed "$seed" -max-mounts "$MAX_MOUNTS" ${RANDTREE_FLAGS:-} >"$sdir/scenario.sh"
	fi
	declare -A cells=()
	note='' mounts=- nns=- bad=-
	if ! ct=$(start_ct "$w" "$sdir" 2>"$w/start.err"); then
		note="the container did not start: $(head -c 200 "$w/start.err")"
		broken=$((broken + 1))
		broken_list+=("$seed")
	else
		live=$ct
		# Operations the generator's model got wrong (logged, not run).
		cat "$w/root/scenario.log" "$w/root/.rt/"*.log >"$w/scenario.log" 2>/dev/null || true
		bad=$(grep -c 'randtree: op failed\|scenario failed' "$w/scenario.log" || true)
		"$MNTV2" show --tree "$ct" --canonical >"$w/before.txt"
		mounts=$(awk '/^mount namespace/ { n += $4 } END { print n + 0 }' "$w/before.txt")
		nns=$(grep -c '^mount namespace' "$w/before.txt" || true)
		if ! bounded "$CRIU" dump -t "$ct" -D "$w/img" -W "$w/work" -o dump.log -v4 --ext-mount-map auto \
			--enable-external-sharing --enable-external-masters >/dev/null 2>&1; then
			note="criu dump fails: $(firsterr "$w/work/dump.log" | cut -c1-160)"
			dumpfails=$((dumpfails + 1))
			end_tree "$ct"
			live=
		else
			live=
			sum=$(digest "$w/img")
			declare -A whys=()
			for m in "${modes[@]}"; do
				why=
				case $m in
				criu-v2) criu_restore v2 alone ;;
				criu-compat) criu_restore compat alone ;;
				mntv2) standalone ;;
				hook-v2) criu_restore v2 hook ;;
				hook-compat) criu_restore compat hook ;;
				strip-v2) criu_restore v2 strip ;;
				strip-compat) criu_restore compat strip ;;
				esac
				if [ "$(digest "$w/img")" != "$sum" ]; then
					cell="$cell,images-changed"
					"$MNTV2" criu-images restore "$w/img" >/dev/null 2>&1 || true
				fi
				cells[$m]=$cell
				whys[$m]=$why
				k=${cell%%[(,]*}
				count[$m-$k]=$((${count[$m-$k]:-0} + 1))
			done
			# Worse or better than CRIU alone.
			w_here=()
			for pair in hook-v2:criu-v2 hook-compat:criu-compat strip-v2:criu-v2 strip-compat:criu-compat; do
				m=${pair%%:*} c=${pair#*:}
				if [ -z "${cells[$m]:-}" ] || [ -z "${cells[$c]:-}" ]; then continue; fi
				if [ "${cells[$c]}" = identical ] && [ "${cells[$m]}" != identical ]; then
					w_here+=("$m")
					count[$m-worse]=$((${count[$m-worse]:-0} + 1))
				elif [ "${cells[$c]}" != identical ] && [ "${cells[$m]}" = identical ]; then
					count[$m-better]=$((${count[$m-better]:-0} + 1))
				fi
			done
			if [ -z "${cells[mntv2]:-}" ]; then
				:
			elif [ "${cells[mntv2]}" != identical ] && { [ "${cells[criu-v2]:-}" = identical ] || [ "${cells[criu-compat]:-}" = identical ]; }; then
				w_here+=(mntv2)
				count[mntv2-worse]=$((${count[mntv2-worse]:-0} + 1))
			elif [ "${cells[mntv2]}" = identical ] && [ "${cells[criu-v2]:-}" != identical ] && [ "${cells[criu-compat]:-}" != identical ]; then
				count[mntv2-better]=$((${count[mntv2-better]:-0} + 1))
			fi
			# Every result that is not identical, with its reason and class.
			for m in "${modes[@]}"; do
				[ "${cells[$m]}" != identical ] || continue
				wf=-
				for x in "${w_here[@]}"; do
					[ "$x" != "$m" ] || wf=worse
				done
				printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$seed" "$mounts" "$m" "${cells[$m]}" "$wf" \
					"$(class "${whys[$m]}")" "${whys[$m]}" >>"$scratch/failures.tsv"
			done
			unset whys
			if [ ${#w_here[@]} -gt 0 ]; then
				worse=$((worse + 1))
				worse_list+=("$seed(${w_here[*]})")
				note="WORSE: ${w_here[*]}"
			fi
		fi
	fi
	# A failed operation is the generator's model being wrong: the scenario
	# still ran (each operation is guarded), with fewer mounts; counted.
	[ "$bad" = - ] || [ "$bad" = 0 ] || { opfails=$((opfails + bad)); opseeds+=("$seed"); }
	secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
	total_secs=$(awk -v a="$total_secs" -v b="$secs" 'BEGIN { print a + b }')
	# shellcheck disable=SC2059
	out "$(printf "$fmt" "$seed" "$mounts" "$nns" "$bad" "${cells[criu-v2]:--}" "${cells[criu-compat]:--}" "${cells[mntv2]:--}" \
		"${cells[hook-v2]:--}" "${cells[hook-compat]:--}" "${cells[strip-v2]:--}" "${cells[strip-compat]:--}" \
		"$(printf '%.1f' "$secs")" "$note")"
	keep=${DIFF_KEEP:-}
	for m in mntv2 hook-v2 hook-compat strip-v2 strip-compat; do
		[ "${cells[$m]:-identical}" = identical ] || keep=1
	done
	[ -z "$note" ] || keep=1
	if [ -n "$keep" ]; then
		kept+=("$w")
	else
		unmount_below "$w"
		rm -rf "$w"
	fi
	unset cells
done

out ""
out "seeds: $seeds, not dumped by CRIU: $dumpfails, could not run: $broken${broken_list[*]:+ (${broken_list[*]})}"
out "scenario operations that failed (the generator's model was wrong; the scenario ran without them): $opfails${opseeds[*]:+ (seeds ${opseeds[*]})}"
for m in "${modes[@]}"; do
	line=$(printf '%-12s identical %3d  wrong %3d  fails %3d  hangs %3d' "$m" "${count[$m-identical]:-0}" "${count[$m-wrong]:-0}" \
		"${count[$m-fails]:-0}" "${count[$m-hangs]:-0}")
	case $m in
	mntv2 | hook-* | strip-*) line="$line  worse than CRIU $(printf '%3d' "${count[$m-worse]:-0}")  better $(printf '%3d' "${count[$m-better]:-0}")" ;;
	esac
	out "$line"
done
out "seconds: $(printf '%.0f' "$total_secs") total, $(awk -v a="$total_secs" -v n="$seeds" 'BEGIN { printf "%.1f", a / n }') per seed"
[ ${#worse_list[@]} -eq 0 ] || out "worse than CRIU: ${worse_list[*]}"
if [ -s "$scratch/failures.tsv" ]; then
	# Classes of the results that are not identical, per mode: how many,
	# how many of them worse than CRIU, and the seed with the fewest
	# mounts as the example.
	out ""
	out "classes (mode, results, worse than CRIU, smallest example seed: class):"
	awk -F'\t' '{ k = $3 "\t" $6; n[k]++; if ($5 == "worse") w[k]++; if (!(k in ex) || $2 + 0 < m[k]) { ex[k] = $1; m[k] = $2 + 0 } }
		END { for (k in n) { split(k, a, "\t"); printf "%-12s %4d %4d  seed %-6s %s\n", a[1], n[k], w[k] + 0, ex[k], a[2] } }' \
		"$scratch/failures.tsv" | sort -k1,1 -k2,2nr | tee -a "$DIFF_OUT"
	{
		echo ""
		echo "results that are not identical (seed, mounts, mode, result, worse, reason):"
		cut -f1-5,7 "$scratch/failures.tsv"
	} >>"$DIFF_OUT"
fi
if [ ${#kept[@]} -gt 0 ]; then
	out "work directories kept: $scratch (seed-N: scenario/scenario.sh, before.txt, after-*.txt, verify-*.txt, work/*.log)"
else
	rm -rf "$scratch"
fi
out "table: $DIFF_OUT"
[ "$worse" -eq 0 ] && [ "$broken" -eq 0 ]

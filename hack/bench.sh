#!/usr/bin/env bash
# make bench: mntv2 against the syscall floor on synthetic forests, the
# cost of the hook's no-op action, and, when $CRIU is set, CRIU alone
# against CRIU + mntv2 (both hook modes) on real containers
# (hack/bench-criu.sh). Writes bench/bench.json and bench/bench.svg and
# prints the tables and the time it took.
#
# usage: [CRIU=/path/to/criu] hack/bench.sh
# env:   BENCH_CRIU_SIZES  peer binds of the CRIU containers (default "1000 5000 10000")
#        BENCH_ARGS        more flags for hack/bench (e.g. -shapes peers -plan 1000)
#        and those of hack/bench-criu.sh (BENCH_CRIU_RUNS, BENCH_CRIU_BIG_RUNS, BENCH_CRIU_SHAPES)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
start=$EPOCHREALTIME
mkdir -p bench
go build -o bin/mntv2 ./cmd/mntv2
go build -o bin/mntv2-bench ./hack/bench
go build -o bin/rpc-restore ./hack/rpc-restore
args=(-noop bin/mntv2)
if [ -n "${CRIU:-}" ]; then
	# shellcheck disable=SC2086 # the sizes are words
	CRIU=$CRIU MNTV2=$top/bin/mntv2 MNTV2_BENCH=$top/bin/mntv2-bench MNTV2_RPC=$top/bin/rpc-restore hack/bench-criu.sh bench/criu.json ${BENCH_CRIU_SIZES:-1000 5000 10000}
	args+=(-criu bench/criu.json)
fi
# shellcheck disable=SC2086 # BENCH_ARGS are words
bin/mntv2-bench -out bench/bench.json -svg bench/bench.svg "${args[@]}" ${BENCH_ARGS:-}
took=$((10#${EPOCHREALTIME/./} - 10#${start/./}))
echo "wrote bench/bench.json and bench/bench.svg; make bench took $((took / 1000000)) s"

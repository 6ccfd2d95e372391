#!/usr/bin/env bash
# make bench: mntv2 against the syscall floor on synthetic forests, and,
# when $CRIU is set, against CRIU 4.2 on real containers. Writes
# bench/bench.json and bench/bench.svg and prints the tables.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
mkdir -p bench
go build -o bin/mntv2-bench ./hack/bench
args=()
if [ -n "${CRIU:-}" ]; then
	CRIU=$CRIU hack/bench-criu.sh bench/criu.json ${BENCH_CRIU_SIZES:-1000 5000}
	args+=(-criu bench/criu.json)
fi
bin/mntv2-bench -out bench/bench.json -svg bench/bench.svg "${args[@]}" ${BENCH_ARGS:-}
echo "wrote bench/bench.json and bench/bench.svg"

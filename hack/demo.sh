#!/usr/bin/env bash
# make demo: restore the seed example (fixture 01, the one CRIU's compat mode
# cannot restore) into a scratch root inside a private mount namespace, print
# the original and restored trees side by side, ask verify, and clean up.
#
# Needs root (mount namespaces). Changes nothing on the host: everything
# happens in a namespace made with unshare -m and made private first.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=${MNTV2:-$here/bin/mntv2}
fixture=${FIXTURE:-$here/testdata/criu-4.2/01-seed-reverse-order}

if [ "$(id -u)" != 0 ]; then
	echo "make demo needs root: it creates mount namespaces" >&2
	exit 2
fi
[ -x "$bin" ] || { echo "no $bin: run make build" >&2; exit 2; }

if [ "${MNTV2_DEMO_INSIDE:-}" != 1 ]; then
	# A new mount namespace, made private before anything is mounted:
	# nothing below reaches the host's mounts.
	exec env MNTV2_DEMO_INSIDE=1 unshare --mount --propagation private -- "$0" "$@"
fi

scratch=$(mktemp -d /tmp/mntv2-demo.XXXXXX)
cleanup() {
	"$bin" release --pin-dir "$scratch/pins" >/dev/null 2>&1 || true
	umount -l "$scratch/root" 2>/dev/null || true
	rm -rf "$scratch"
}
trap cleanup EXIT

mkdir "$scratch/root"
mount -t tmpfs ctroot "$scratch/root"

echo "== the checkpoint: $fixture/images (CRIU 4.2 compat mode cannot restore it)"
"$bin" show --images "$fixture/images" | sed -n '/^sharing groups/,$p'
echo
echo "== mntv2 restore"
"$bin" restore --images "$fixture/images" --root "$scratch/root" \
	--pin-dir "$scratch/pins" --ext-mount-map auto --report "$scratch/report.json"
echo

for pin in "$scratch"/pins/mntns-*; do
	id=${pin##*mntns-}
	# --canonical renames mount ids, groups and devices by order of
	# appearance: what verify ignores. Left, the container CRIU dumped;
	# right, the namespace mntv2 restored.
	"$bin" show --canonical --mntns "$id" \
		--mountinfo "$fixture/mountinfo/mntns-$id.mountinfo" | sed '/^$/,$d' >"$scratch/original-$id"
	"$bin" show --canonical --pin-dir "$scratch/pins" --mntns "$id" | sed '/^$/,$d' >"$scratch/restored-$id"
	printf '%-78s %s\n' "== original (the dumped container)" "== restored by mntv2"
	pr -m -t -w 160 "$scratch/original-$id" "$scratch/restored-$id" | expand
	echo
done

echo "== mntv2 verify --pin-dir"
if "$bin" verify --images "$fixture/images" --pin-dir "$scratch/pins"; then
	verdict=0
else
	verdict=$?
fi
echo
echo "== cleanup: release the pins, unmount the scratch root"
"$bin" release --pin-dir "$scratch/pins"
exit "$verdict"

# An unprivileged container (its own user namespace, ./userns) with an
# idmapped tmpfs volume at /vol made by its runtime (hack/uns): files on it
# with several owners, set inside; a read-only bind of it; a shared volume
# with a peer bind and a slave bind; nested mount namespaces made inside,
# one --propagation slave, one shared, and a mount that propagates into
# them afterwards. The owners, seen from inside, go to /.owners-before for
# check.sh.
set -e
mkdir -p /vol/home/u /vol/srv
echo root >/vol/root-file
chown 0:0 /vol/root-file
echo u >/vol/home/u/file
chown -R 1000 /vol/home/u
echo g >/vol/srv/both
chown 1001:1002 /vol/srv/both
mkdir -p /tmp/vol-ro
mount --bind /vol /tmp/vol-ro
mount -o remount,bind,ro /tmp/vol-ro

mkdir -p /tmp/shr /tmp/peer /tmp/slave
mount -t tmpfs shr /tmp/shr
mount --make-shared /tmp/shr
mount --bind /tmp/shr /tmp/peer
mount --bind /tmp/shr /tmp/slave
mount --make-slave /tmp/slave

for p in slave shared; do
	unshare -m --propagation "$p" sh -c "mkdir -p /tmp/in-$p && mount -t tmpfs in-$p /tmp/in-$p && touch /tmp/shr/.$p-ready && exec sleep 100001" \
		</dev/null >/dev/null 2>&1 &
done
for _ in $(seq 200); do
	[ -e /tmp/shr/.slave-ready ] && [ -e /tmp/shr/.shared-ready ] && break
	sleep 0.02
done
mkdir -p /tmp/shr/after
mount -t tmpfs propagated /tmp/shr/after
# The owners: /vol's files, and the roots and files of tmpfses mounted
# inside (their ids are the container's, CRIU's tar records them so).
{ find /vol; echo /dev /dev/null /tmp /tmp/shr /tmp/shr/.slave-ready /tmp/shr/after; } | xargs stat -c '%u:%g %n' >/.owners-before

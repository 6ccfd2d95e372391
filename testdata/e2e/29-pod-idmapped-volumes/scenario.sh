# A Kubernetes-style pod in a user namespace (./userns, hostUsers: false):
# host directories as idmapped volumes, /data read-write and /config
# read-only; the first container writes a file of its own ids to /data;
# a second container of the pod, in its own mount namespace, shares the
# volumes (also at paths of its own) and has a /tmp of its own. The
# owners, seen from inside, go to /.owners-before for check.sh.
set -e
mount -o remount,bind,ro /config
echo ct >/data/by-ct
chown 1001:1002 /data/by-ct
unshare -m --propagation private sh -c 'mount -t tmpfs tmp2 /tmp && cd /tmp && mkdir -p /tmp/data /tmp/config &&
	mount --bind /data /tmp/data && mount --bind /config /tmp/config && touch /.ct2-ready && exec sleep 100002' \
	</dev/null >/dev/null 2>&1 &
for _ in $(seq 200); do
	[ -e /.ct2-ready ] && break
	sleep 0.02
done
find /data /config -exec stat -c '%u:%g %n' {} + >/.owners-before

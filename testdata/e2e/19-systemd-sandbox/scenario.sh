# A systemd-sandboxed service inside a system container: / rshared as
# systemd makes it; the service's namespace a slave of it, with PrivateTmp
# (a tmpfs on /tmp), ProtectSystem=strict (every mount read-only),
# ProtectHome (a read-only tmpfs on /home), PrivateDevices (a tmpfs /dev
# with /dev/null bound in) and ReadWritePaths (a rw bind under the
# read-only tree); a mount made in the container afterwards propagates
# into the service. CRIU 4.2 cannot restore it.
mount --make-rshared /
mkdir -p /srv/data /home /var/lib/svc /mnt/later
mount -t tmpfs srv /srv
mkdir -p /srv/data /srv/later
cat >/.svc.sh <<'SVC'
set -e
mount -t tmpfs privtmp /tmp
mount -t tmpfs -o ro,mode=755 protecthome /home
mount -t tmpfs -o mode=755 privdev /dev
touch /dev/null
mount --bind /.devnull /dev/null 2>/dev/null || true
mount --bind /srv/data /srv/data
# ProtectSystem=strict: every mount read-only, then the ReadWritePaths rw.
for m in $(awk '{ print $5 }' /proc/self/mountinfo | sort -u); do
	mount -o remount,bind,ro "$m" 2>/dev/null || true
done
mount -o remount,bind,rw /srv/data
touch /.svc.ready
exec sleep 1000000
SVC
touch /.devnull
unshare --mount --propagation slave bash /.svc.sh </dev/null >/dev/null 2>&1 &
for _ in $(seq 500); do [ -e /.svc.ready ] && break; sleep 0.01; done
# After the service started: a mount that propagates into it.
mount -t tmpfs later /srv/later

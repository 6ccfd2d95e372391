# The pod's volumes on the host: directories of a host tmpfs (kubelet's
# /var/lib/kubelet/pods/UID/volumes), with files owned by host uids 0 and
# 1000, which ./userns binds into the pod idmapped.
mkdir -p "$W/pod"
mount -t tmpfs podvols "$W/pod"
mkdir -p "$W/pod/data/sub" "$W/pod/config"
echo data >"$W/pod/data/by-root"
echo user >"$W/pod/data/sub/by-user"
chown -R 1000:1000 "$W/pod/data/sub"
echo conf >"$W/pod/config/app.conf"
chown 1000:0 "$W/pod/config/app.conf"

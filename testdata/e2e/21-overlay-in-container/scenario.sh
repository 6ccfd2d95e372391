# An overlay whose layers live inside the container (Docker or podman in a
# system container; any overlay a process made on its own tmpfs): CRIU 4.2
# mounts it with the layer paths looked up on the host, before the layers
# exist, and fails in both modes. mntv2 makes it inside the namespace, after
# the layers, with its options as dumped; a bind of it and a mount on it
# come back too.
mkdir -p /tmp/ov
mount -t tmpfs ovl /tmp/ov
mkdir -p /tmp/ov/l1 /tmp/ov/l2 /tmp/ov/u /tmp/ov/w /tmp/ov/merged /tmp/ovbind
echo lower1 >/tmp/ov/l1/a
echo lower2 >/tmp/ov/l2/b
mount -t overlay overlay -o lowerdir=/tmp/ov/l1:/tmp/ov/l2,upperdir=/tmp/ov/u,workdir=/tmp/ov/w /tmp/ov/merged
echo upper >/tmp/ov/merged/c
mkdir -p /tmp/ov/merged/sub
mount -t tmpfs onov /tmp/ov/merged/sub
mount --bind /tmp/ov/merged /tmp/ovbind

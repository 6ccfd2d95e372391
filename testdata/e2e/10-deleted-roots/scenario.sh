# Mounts whose roots were deleted after the bind: a directory and a file,
# in a tmpfs and in the container's root filesystem (the restore root).
mkdir -p /tmp/src /tmp/m1 /tmp/mf /mnt/rd
mount -t tmpfs src /tmp/src
mkdir /tmp/src/x
touch /tmp/src/f
mount --bind /tmp/src/x /tmp/m1
mount --bind /tmp/src/f /tmp/mf
rmdir /tmp/src/x
rm /tmp/src/f
mkdir -p /srv/gone
mount --bind /srv/gone /mnt/rd
rmdir /srv/gone

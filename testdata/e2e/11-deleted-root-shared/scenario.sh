# One deleted root shared by two mounts, peers of each other (CRIU 4.2's
# mount-v2 makes the root again once per mount and fails on the second).
mkdir -p /tmp/src /tmp/m1 /tmp/m2
mount -t tmpfs src /tmp/src
mkdir /tmp/src/x
mount --bind /tmp/src/x /tmp/m1
mount --make-shared /tmp/m1
mount --bind /tmp/m1 /tmp/m2
rmdir /tmp/src/x

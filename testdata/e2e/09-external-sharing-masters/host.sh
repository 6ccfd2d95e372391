# a shared tmpfs of the host, bound into the container at /mnt/ext
mkdir -p "$W/hostshare"
mount -t tmpfs hostshare "$W/hostshare"
mount --make-shared "$W/hostshare"
mkdir -p "$W/hostshare/sub"
CT_BINDS="$W/hostshare:/mnt/ext"

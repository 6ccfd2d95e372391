# /mnt/ext is a peer of the host's shared mount; /mnt/slave receives from it
mkdir -p /mnt/slave
mount --bind /mnt/ext /mnt/slave
mount --make-slave /mnt/slave

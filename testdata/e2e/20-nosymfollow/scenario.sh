# A mount with nosymfollow, which CRIU's dump drops (criu/proc_parse.c
# parse_mnt_flags knows no such flag): with mntv2 as the dump's action
# script, post-dump records it next to the images, and the restores made
# with mntv2 give it back; CRIU alone restores the mount without it.
mkdir -p /tmp/nsf /tmp/nsf2
mount -t tmpfs -o nosymfollow nsf /tmp/nsf
mount --bind /tmp/nsf /tmp/nsf2
mount -o remount,bind,nosymfollow,ro /tmp/nsf2

# Sourced after each restore ($rpid: the restored root task, $W: the run's
# scratch directory): the container's mounts must be in the host's group,
# not in a new group that merely looks the same. Sets check_failed.
tag() { # tag MOUNTINFO MOUNTPOINT shared|master
	awk -v p="$2" -v t="$3:" '$5 == p { for (i = 7; $i != "-"; i++) if (index($i, t) == 1) print substr($i, length(t) + 1) }' "$1" | tail -1
}
host=$(tag /proc/self/mountinfo "$W/hostshare" shared)
ext=$(tag "/proc/$rpid/mountinfo" /mnt/ext shared)
slave=$(tag "/proc/$rpid/mountinfo" /mnt/slave master)
if [ -z "$host" ] || [ "$ext" != "$host" ] || [ "$slave" != "$host" ]; then
	check_failed="host group ${host:-none}, /mnt/ext shared:${ext:-none}, /mnt/slave master:${slave:-none}"
fi

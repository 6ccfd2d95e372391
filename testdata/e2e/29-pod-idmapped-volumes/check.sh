# Sourced after each restore ($rpid: the restored root task, $W: the run's
# scratch directory): in both containers of the pod the volumes' files have
# the owners they had before the dump, seen from inside (the pod's user
# namespace); every volume mount is still idmapped, /config read-only; the
# first container's root can still write /data, and the host sees its file
# as uid 0. Sets check_failed.
bad() { check_failed="${check_failed:+$check_failed; }$*"; }
ct2=
read -ra kids <"/proc/$rpid/task/$rpid/children" || true
for p in "${kids[@]}"; do
	[ "$(readlink "/proc/$p/ns/mnt")" = "$(readlink "/proc/$rpid/ns/mnt")" ] || ct2=$p
done
[ -n "$ct2" ] || bad "no second container"
for ct in ct1:"$rpid" ${ct2:+ct2:$ct2}; do
	t=${ct#*:} ct=${ct%%:*}
	owners=$(awk '{ print $2 }' "$W/root/.owners-before" | nsenter -t "$t" -U -m xargs stat -c '%u:%g %n' 2>&1)
	differ=$(diff <(echo "$owners") "$W/root/.owners-before" | grep -c '^<' || true)
	[ "$differ" = 0 ] || bad "owners in $ct: $differ of $(wc -l <"$W/root/.owners-before") differ (now $(echo "$owners" | head -n1), was $(head -n1 "$W/root/.owners-before"))"
	mounts="/data /config"
	[ "$ct" = ct1 ] || mounts="$mounts /tmp/data /tmp/config"
	for m in $mounts; do
		opts=$(awk -v m="$m" '$5 == m { print $6 }' "/proc/$t/mountinfo")
		want=rw
		[ "${m##*/}" = data ] || want=ro
		case ",$opts," in
		*,idmapped,*) ;;
		*) bad "$m in $ct is not idmapped ($opts)" ;;
		esac
		[ "${opts%%,*}" = "$want" ] || bad "$m in $ct is not $want ($opts)"
	done
done
if nsenter -t "$rpid" -U -m sh -c 'echo x >/data/after-restore' 2>/dev/null; then
	got=$(stat -c %u:%g "$W/pod/data/after-restore")
	[ "$got" = 0:0 ] || bad "a file the container's root wrote to /data is $got on the host"
else
	bad "the container's root cannot write /data"
fi
rm -f "$W/pod/data/after-restore"

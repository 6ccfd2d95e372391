# Sourced after each restore ($rpid: the restored root task, $W: the run's
# scratch directory): the files on /vol and the tmpfses made inside have
# the owners they had before the dump, seen from inside the container (its
# user and mount namespaces); /vol and its read-only bind are still
# idmapped; the tmpfses made inside still belong to the container's user
# namespace (its root may remount them). Sets check_failed.
bad() { check_failed="${check_failed:+$check_failed; }$*"; }
owners=$(awk '{ print $2 }' "$W/root/.owners-before" | nsenter -t "$rpid" -U -m xargs stat -c '%u:%g %n' 2>&1)
if [ "$owners" != "$(cat "$W/root/.owners-before")" ]; then
	bad "owners differ: $(diff <(echo "$owners") "$W/root/.owners-before" | awk '/^</ { sub(/^< /, ""); now[++n] = $0 } /^>/ { sub(/^> /, ""); was[++k] = $0 }
		END { for (i = 1; i <= n; i++) { split(now[i], a, " "); split(was[i], b, " "); printf "%s%s %s (was %s)", (i > 1 ? ", " : ""), a[2], a[1], b[1] } }' || true)"
fi
for m in /vol /tmp/vol-ro; do
	awk -v m="$m" '$5 == m && $6 ~ /(^|,)idmapped(,|$)/ { found = 1 } END { exit !found }' "/proc/$rpid/mountinfo" ||
		bad "$m is not idmapped"
done
for m in /tmp/shr /tmp/shr/after; do
	nsenter -t "$rpid" -U -m mount -o remount "$m" 2>/dev/null ||
		bad "the container's root cannot remount $m (a superblock of another user namespace)"
done

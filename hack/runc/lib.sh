# shellcheck shell=bash disable=SC2034,SC2153,SC2154
# Shell functions of hack/e2e-runc.sh: the busybox rootfs, the OCI bundle
# (config.json from `runc spec`, adjusted), runc with its own state
# directory, CRIU's runc.conf, and the propagation probes. Sourced, not
# run. Needs: $scratch, $state, $CRIU, $MNTV2, and per case $w, $name,
# $bundle, $pid, $hs and $hp (the host sources of the rslave and the rshared
# volume).

# run_runc ARGS...: runc with this run's own state directory (so only the
# containers made here are ever listed or deleted) and the CRIU under test.
run_runc() { runc --root "$state" --criu "$CRIU" "$@"; }

# ct_pid: the pid of the case's container's init.
ct_pid() {
	if [ "$engine" = podman ]; then
		run_podman inspect -f '{{.State.Pid}}' "$name" 2>/dev/null
	else
		run_runc state "$name" 2>/dev/null | jq -r '.pid // empty'
	fi
}

# ct_exec CMD: a shell command in the running container (runc or podman
# exec), its output appended to $w/exec.log. Fails when the command does.
ct_exec() {
	printf '+ %s\n' "$*" >>"$w/exec.log"
	if [ "$engine" = podman ]; then
		run_podman exec "$name" sh -c "$*" </dev/null >>"$w/exec.log" 2>&1
	else
		run_runc exec "$name" sh -c "$*" </dev/null >>"$w/exec.log" 2>&1
	fi
}

# The runc engine of a case: runc_start (sets start_error when it fails),
# runc_checkpoint (checkpoint_error), runc_restore MODE (CRIU's log in
# $crlog), runc_delete. Every call names the container made here.
runc_start() {
	make_rootfs "$ROOTFS"
	make_config "$VOLUMES" "$ROOTPROP" "$SYSADMIN"
	created+=("$name")
	run_runc --log "$w/runc.log" run -d --bundle "$bundle" "$name" </dev/null >/dev/null 2>&1 ||
		{ start_error="runc run: $(tail -1 "$w/runc.log")"; return 1; }
}
runc_checkpoint() {
	run_runc --log "$w/runc.log" checkpoint --image-path "$w/img" --work-path "$w/dump" "$name" </dev/null >/dev/null 2>&1 ||
		{ checkpoint_error="$(firsterr "$w/dump/dump.log") $(tail -1 "$w/runc.log")"; return 1; }
}
runc_restore() {
	run_runc --log "$w/runc-$1.log" restore -d --image-path "$w/img" --work-path "$w/rst-$1" \
		--bundle "$bundle" "$name" </dev/null >/dev/null 2>"$w/restore-$1.err"
}
runc_delete() { run_runc delete -f "$name" >/dev/null 2>&1 || true; }
runc_images() { echo "$w/img"; }

# build_base DIR: a minimal rootfs of busybox-static and its applets, with the
# mountpoints the cases use (the rootfs is read-only in the container, as in
# runc's default config.json).
build_base() {
	local d=$1 a
	mkdir -p "$d"/{bin,proc,sys,dev,etc,tmp,vol/tmp,vol/slave,vol/shared,pa,pb,pc}
	cp /bin/busybox "$d/bin/busybox"
	for a in sh sleep mount umount mkdir rmdir cat ls touch grep; do
		ln -s busybox "$d/bin/$a"
	done
	echo 'root:x:0:0:root:/:/bin/sh' >"$d/etc/passwd"
	echo 'root:x:0:' >"$d/etc/group"
}

# make_rootfs KIND: the case's $bundle/rootfs, a copy of the base on this
# disk (KIND dir) or an overlay mounted here with the base as its lower layer
# (KIND overlay).
make_rootfs() {
	mkdir -p "$bundle/rootfs"
	case $1 in
	dir) cp -a "$scratch/base/." "$bundle/rootfs/" ;;
	overlay)
		mkdir -p "$w/upper" "$w/ovwork"
		mount -t overlay "ovl-$name" -o "lowerdir=$scratch/base,upperdir=$w/upper,workdir=$w/ovwork" "$bundle/rootfs"
		;;
	*) echo "make_rootfs: unknown kind $1" >&2; return 1 ;;
	esac
}

# make_source DIR: a host directory made a shared mount of its own (in this
# script's private namespace), the source of a propagated volume.
make_source() {
	mkdir -p "$1"
	mount --bind "$1" "$1"
	mount --make-shared "$1"
}

# make_config VOLUMES_JSON ROOTPROP SYSADMIN: $bundle/config.json from
# `runc spec`, with every default mount, masked and read-only path kept:
# no terminal, `sleep` as the process, the volumes appended to the mounts,
# rootfsPropagation ROOTPROP (empty: runc's default, rslave) and
# CAP_SYS_ADMIN added when SYSADMIN is 1 (the cases that mount inside).
make_config() {
	local vols=$1 rootprop=$2 sysadmin=$3
	(cd "$bundle" && runc spec)
	jq --argjson vols "$vols" --arg host "$name" --arg rootprop "$rootprop" --argjson sysadmin "$sysadmin" '
		.process.terminal = false
		| .process.args = ["sleep", "1000000"]
		| .hostname = $host
		| .mounts += $vols
		| if $rootprop != "" then .linux.rootfsPropagation = $rootprop else . end
		| if $sysadmin == 1 then
			.process.capabilities.bounding += ["CAP_SYS_ADMIN"]
			| .process.capabilities.effective += ["CAP_SYS_ADMIN"]
			| .process.capabilities.permitted += ["CAP_SYS_ADMIN"]
		  else . end' "$bundle/config.json" >"$bundle/config.json.new"
	mv "$bundle/config.json.new" "$bundle/config.json"
}

# Volumes for make_config.
vol_tmpfs() { printf '{"destination":"/vol/tmp","type":"tmpfs","source":"tmpfs","options":["nosuid","nodev","mode=755","size=16m"]}'; }
vol_bind() { printf '{"destination":"%s","type":"bind","source":"%s","options":["rbind","%s"]}' "$1" "$2" "$3"; }

# write_conf TEXT: /etc/criu/runc.conf, which runc tells CRIU to read (both
# for checkpoint and restore). remove_conf: none at all.
write_conf() {
	mkdir -p /etc/criu
	printf '%s\n' "$1" >/etc/criu/runc.conf.mntv2-e2e
	mv /etc/criu/runc.conf.mntv2-e2e /etc/criu/runc.conf
}
remove_conf() { rm -f /etc/criu/runc.conf; }

# write_hook_conf TEXT: /etc/mntv2/criu-hook.conf, mntv2's settings where
# its environment cannot be set (podman's conmon passes none on); the
# environment's settings win over it. remove_hook_conf: none at all.
write_hook_conf() {
	mkdir -p /etc/mntv2
	printf '%s\n' "$1" >/etc/mntv2/criu-hook.conf.mntv2-e2e
	mv /etc/mntv2/criu-hook.conf.mntv2-e2e /etc/mntv2/criu-hook.conf
}
remove_hook_conf() { rm -f /etc/mntv2/criu-hook.conf; }

# mounted_in PID PATH: is PATH a mountpoint in PID's mount namespace (as
# PID's root sees it)?
mounted_in() { awk -v p="$2" '$5 == p { f = 1 } END { exit !f }' "/proc/$1/mountinfo"; }

# host_mounts: every mount below the volumes' host sources, in this
# namespace (the sources themselves excluded): "MOUNTPOINT SOURCE" lines.
host_mounts() {
	awk -v d="$w/host/" 'index($5, d) == 1 && $5 !~ "^" d "[^/]*$" {
		for (i = 7; $i != "-"; i++) {}
		print substr($5, length(d) + 1), $(i + 2)
	}' /proc/self/mountinfo | LC_ALL=C sort
}

# reset_host_mounts: unmount everything below the volumes' host sources and
# mount again what was there when the container was checkpointed
# ($w/host-mounts.txt): every restore of a case starts from the same host.
reset_host_mounts() {
	local m src
	awk -v d="$w/host/" 'index($5, d) == 1 && $5 !~ "^" d "[^/]*$" { print $5 }' /proc/self/mountinfo |
		LC_ALL=C sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
	while read -r m src; do
		mkdir -p "$w/host/$m"
		mount -t tmpfs -o size=1m "$src" "$w/host/$m"
	done <"$w/host-mounts.txt"
}

# The probes: each one makes a mount, looks where it propagated, and
# removes it again; each prints yes or no. They run before the checkpoint
# (what the images say) and after every restore.
#
# probe_in HOSTDIR CTDIR: a host mount below HOSTDIR seen below CTDIR?
probe_in() {
	local h=$1 c=$2 seen=no
	mkdir -p "$h/probe-in"
	mount -t tmpfs -o size=1m probe-in "$h/probe-in"
	mounted_in "$pid" "$c/probe-in" && seen=yes
	umount "$h/probe-in"
	echo "$seen"
}

# probe_out HOSTDIR CTDIR: a container mount below CTDIR seen below HOSTDIR?
probe_out() {
	local h=$1 c=$2 seen=no
	mkdir -p "$h/probe-out"
	if ! ct_exec "mount -t tmpfs -o size=1m probe-out $c/probe-out"; then
		echo "error"
		return
	fi
	mounted_in self "$h/probe-out" && seen=yes
	ct_exec "umount $c/probe-out" || true
	umount "$h/probe-out" 2>/dev/null || true
	echo "$seen"
}

# probe_peer CTDIR CTDIR2...: a container mount below CTDIR seen below each
# CTDIR2 in the container? (no, yes or a list like yes,no).
probe_peer() {
	local src=$1 d out=
	shift
	if ! ct_exec "mkdir -p $src/probe-peer && mount -t tmpfs -o size=1m probe-peer $src/probe-peer"; then
		echo "error"
		return
	fi
	for d in "$@"; do
		if mounted_in "$pid" "$d/probe-peer"; then out+=${out:+,}yes; else out+=${out:+,}no; fi
	done
	ct_exec "umount $src/probe-peer" || true
	echo "$out"
}

# sharing_of FILE: the sharing of a canonical `mntv2 show` text: each
# mount's mountpoint with its propagation, and the sharing groups.
sharing_of() {
	awk '/^sharing groups:/ { g = 1 } g { print; next }
		/^ *[0-9]+ \// {
			p = ""
			for (i = NF; i > 2 && $i ~ /^(shared:|master:|unbindable|private$)/; i--) p = $i " " p
			print $2, p
		}' "$1"
}

# cmp3 BEFORE REF HOOK DETAIL: compares two restores' texts (canonical
# `mntv2 show`, or sharing_of's) with the capture, line by line, each line
# keyed by what it describes (a namespace header, a mount by its mountpoint
# and how many mounts are stacked there, the group count, a group by its
# number). Prints "BETTER OTHER WORSE": the lines where HOOK differs from
# REF and is the capture's (better), where both differ from the capture
# (other), where REF is the capture's and HOOK is not (worse); DETAIL gets
# a "KEY: before | ref | hook" line for each worse one.
cmp3() {
	awk -v detail="$4" '
		FNR == 1 { fi++; ns = "" }
		{
			line = $0
			if (match(line, /^mount namespace [0-9]+/)) ns = k = substr(line, RSTART, RLENGTH)
			else if (line ~ /^sharing groups:/) k = ns " groups"
			else if (match(line, /^ *group [0-9]+/)) {
				g = substr(line, RSTART, RLENGTH)
				sub(/^ +/, "", g)
				k = ns " " g
			}
			else {
				split(line, f, " ")
				k = ns " " (f[1] ~ /^[0-9]+$/ ? f[2] : f[1])
				k = k "#" (++seen[fi, k])
			}
			sub(/^ +/, "", k)
			if (!(k in keys)) { keys[k] = 1; order[++n] = k }
			has[fi, k] = 1
			val[fi, k] = line
		}
		END {
			for (i = 1; i <= n; i++) {
				k = order[i]
				b = has[1, k] ? val[1, k] : "(none)"
				a = has[2, k] ? val[2, k] : "(none)"
				h = has[3, k] ? val[3, k] : "(none)"
				if (a == h) continue
				if (h == b) better++
				else if (a == b) { worse++; printf "%s: %s | %s | %s\n", k, b, a, h > detail }
				else other++
			}
			printf "%d %d %d\n", better, other, worse
		}' "$1" "$2" "$3"
	[ -e "$4" ] || : >"$4"
}

# probes_worse BEFORE REF HOOK: the labels of the probes whose REF result is
# the capture's and whose HOOK result is not.
probes_worse() {
	awk 'FNR == 1 { fi++ } { v[fi, $1] = $2; if (fi == 1) order[++n] = $1 }
		END { for (i = 1; i <= n; i++) { l = order[i]; if (v[2, l] == v[1, l] && v[3, l] != v[1, l]) printf "%s%s", c++ ? " " : "", l } }' "$1" "$2" "$3"
}

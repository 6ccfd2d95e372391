# shellcheck shell=bash disable=SC2034,SC2154
# The podman engine of hack/e2e-runc.sh (Debian's podman 4.3.1 with runc
# as its runtime): podman_start, podman_checkpoint, podman_restore MODE,
# podman_delete, like the runc_* functions in lib.sh. Sourced.
#
# podman keeps all its state in the scratch directory (--root, --runroot,
# --tmpdir): nothing of the machine's podman is seen or changed. It has no
# option for the CRIU binary: runc runs `criu` from PATH, so a directory
# with a `criu` link to the CRIU under test comes first on PATH. The image
# is the busybox base, imported (no registry). Modes: alone and mntv2
# restore in place (podman container restore --keep), alone+import and
# mntv2+import from the archive of `podman container checkpoint --export`
# (podman container restore --import), after the container is removed;
# mntv2+lenient (mntv2+import+lenient) restores like mntv2 (mntv2+import).

podman_image=localhost/mntv2-e2e:busybox

run_podman() {
	PATH="$scratch/criu-bin:$PATH" podman --root "$scratch/podman-state/storage" --runroot "$scratch/podman-state/run" \
		--tmpdir "$scratch/podman-state/tmp" --runtime runc --cgroup-manager cgroupfs --events-backend file \
		--storage-driver overlay "$@"
}

# podman_userdata: the container's userdata directory (its checkpoint/ holds
# the images, restore.log CRIU's log).
podman_userdata() {
	local id
	id=$(run_podman inspect -f '{{.Id}}' "$name" 2>/dev/null) || return 1
	echo "$scratch/podman-state/storage/overlay-containers/$id/userdata"
}

podman_start() {
	mkdir -p "$scratch/criu-bin" "$scratch/podman-state"
	ln -sf "$CRIU" "$scratch/criu-bin/criu"
	if ! run_podman image exists "$podman_image"; then
		tar -C "$scratch/base" -c . | run_podman import - "$podman_image" >"$w/podman-import.out" 2>&1 ||
			{ start_error="podman import: $(tail -1 "$w/podman-import.out")"; return 1; }
	fi
	created_podman+=("$name")
	# This sandbox cannot raise RLIMIT_NOFILE and RLIMIT_NPROC to podman's defaults.
	run_podman run -d --name "$name" --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --cap-add SYS_ADMIN \
		"${PODMAN_ARGS[@]}" "$podman_image" sleep 1000000 >"$w/podman-run.out" 2>&1 ||
		{ start_error="podman run: $(tail -1 "$w/podman-run.out")"; return 1; }
}

podman_checkpoint() {
	local u
	if ! run_podman container checkpoint --keep --export "$w/export.tar.gz" "$name" >"$w/podman-checkpoint.out" 2>&1; then
		u=$(podman_userdata) || true
		checkpoint_error="$(firsterr "$u/dump.log" 2>/dev/null) $(tail -1 "$w/podman-checkpoint.out")"
		return 1
	fi
	u=$(podman_userdata)
	# The images, for verify (the container's own copy goes with it).
	cp -a "$u/checkpoint" "$w/img"
}

podman_restore() {
	local u args=(container restore --keep)
	case $1 in
	*+import*)
		run_podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
		# A name makes podman give the copy a new id, and so new host
		# paths for its /etc/hosts, /etc/hostname and /run/.containerenv,
		# as on another machine.
		args+=(--import "$w/export.tar.gz" --name "$name")
		;;
	*) args+=("$name") ;;
	esac
	if run_podman "${args[@]}" >"$w/podman-restore-$1.out" 2>&1; then
		u=$(podman_userdata)
		crlog=$u/restore.log
		return 0
	fi
	# The log is podman's, when the container is still there.
	crlog=$w/podman-restore-$1.out
	if u=$(podman_userdata) && [ -f "$u/restore.log" ]; then
		cp "$u/restore.log" "$w/restore-$1.log"
		crlog=$w/restore-$1.log
	fi
	return 1
}

podman_images() {
	local u
	u=$(podman_userdata) && echo "$u/checkpoint"
}

podman_delete() {
	case $1 in
	alone | mntv2 | mntv2+lenient) run_podman stop -t 0 "$name" >/dev/null 2>&1 || true ;;
	*) run_podman rm -f -t 0 "$name" >/dev/null 2>&1 || true ;;
	esac
}

# podman: podman's own container (overlay storage, its /etc/hosts,
# /etc/hostname, /etc/resolv.conf and /run/.containerenv binds) with a tmpfs
# volume and a host directory bound rslave; the probes check that host
# mounts still propagate in after each restore.
case_podman_setup() {
	make_source "$hs"
	engine=podman MODES="alone mntv2 alone+import mntv2+import" CONF=$conf_external
	PODMAN_ARGS=(-v "$hs:/vol/slave:rslave" --tmpfs /vol/tmp)
}
case_podman_started() { :; }
case_podman_probes() { case_rslave_probes; }

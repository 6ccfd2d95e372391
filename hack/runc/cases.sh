# shellcheck shell=bash disable=SC2034,SC2154
# The cases of hack/e2e-runc.sh. Sourced. Each case NAME has (with - in
# NAME written _ in the function names):
#   case_NAME_setup    sets ROOTFS (dir|overlay), VOLUMES (JSON array),
#                      ROOTPROP (rootfsPropagation, empty: runc's rslave),
#                      SYSADMIN (1: CAP_SYS_ADMIN, for mounts inside), CONF
#                      (runc.conf lines CRIU needs at checkpoint and restore,
#                      empty: no runc.conf at all), after making the host
#                      sources it needs ($hs, $hp);
#   case_NAME_started  what happens after `runc run -d` (host mounts
#                      propagating in, container mounts propagating out);
#   case_NAME_probes   prints "LABEL RESULT" lines (see probe_* in lib.sh).
# Every container runs runc's default mounts, masked and read-only paths
# and a tmpfs volume.

# What propagated volumes need in runc.conf (docs/real-world.md): without
# these, CRIU refuses to dump mounts whose peer group or master is outside.
conf_external='ext-mount-map auto
enable-external-masters
enable-external-sharing'

# plain: a plain-directory rootfs on this ext4 disk (CRIU writes its root
# mount as fstype 0), runc's default mounts only.
case_plain_setup() {
	ROOTFS=dir VOLUMES="[$(vol_tmpfs)]" ROOTPROP='' SYSADMIN=0 CONF=''
}
case_plain_started() { :; }
case_plain_probes() { :; }

# rslave: a host directory, a shared mount on the host, bound rslave into
# the container; after start the host mounts a tmpfs below it, which
# propagates in.
case_rslave_setup() {
	make_source "$hs"
	ROOTFS=dir VOLUMES="[$(vol_tmpfs),$(vol_bind /vol/slave "$hs" rslave)]" ROOTPROP='' SYSADMIN=1 CONF=$conf_external
}
case_rslave_started() {
	mkdir -p "$hs/in1"
	mount -t tmpfs -o size=1m host-in1 "$hs/in1"
}
case_rslave_probes() {
	echo "host->ct:/vol/slave $(probe_in "$hs" /vol/slave)"
	echo "ct->host:/vol/slave $(probe_out "$hs" /vol/slave)"
}

# rshared: a host directory bound rshared, with rootfsPropagation shared
# (what Docker and podman set for an rshared volume): the volume is a peer
# of the host's source. After start the host mounts below it (propagates
# in) and the container mounts below it (propagates out).
case_rshared_setup() {
	make_source "$hp"
	ROOTFS=dir VOLUMES="[$(vol_tmpfs),$(vol_bind /vol/shared "$hp" rshared)]" ROOTPROP=shared SYSADMIN=1 CONF=$conf_external
}
case_rshared_started() {
	mkdir -p "$hp/in1" "$hp/out1"
	mount -t tmpfs -o size=1m host-in1 "$hp/in1"
	ct_exec "mount -t tmpfs -o size=1m ct-out1 /vol/shared/out1"
}
case_rshared_probes() {
	echo "host->ct:/vol/shared $(probe_in "$hp" /vol/shared)"
	echo "ct->host:/vol/shared $(probe_out "$hp" /vol/shared)"
}

# rshared-slave-root: an rshared volume with runc's default root
# propagation (rslave): the volume is shared and a slave of the host's
# source: host mounts propagate in, the container's do not go out.
case_rshared_slave_root_setup() {
	make_source "$hp"
	ROOTFS=dir VOLUMES="[$(vol_tmpfs),$(vol_bind /vol/shared "$hp" rshared)]" ROOTPROP='' SYSADMIN=1 CONF=$conf_external
}
case_rshared_slave_root_started() {
	mkdir -p "$hp/in1"
	mount -t tmpfs -o size=1m host-in1 "$hp/in1"
}
case_rshared_slave_root_probes() { case_rshared_probes; }

# shared-root: the container's process makes its own / shared
# (mount --make-rshared /) and makes peer binds: a tmpfs on /pa, a bind of
# it on /pb and a bind of its subdirectory sub on /pc, all one peer group.
case_shared_root_setup() {
	ROOTFS=dir VOLUMES="[$(vol_tmpfs)]" ROOTPROP='' SYSADMIN=1 CONF=''
}
case_shared_root_started() {
	ct_exec "mount --make-rshared / && mount -t tmpfs -o size=1m peers /pa && mkdir /pa/sub &&
		mount --bind /pa /pb && mount --bind /pa/sub /pc"
}
case_shared_root_probes() {
	echo "ct:/pa/sub->/pb/sub,/pc $(probe_peer /pa/sub /pb/sub /pc)"
	echo "ct:/pb->/pa $(probe_peer /pb /pa)"
}

# overlay: an overlay rootfs (mounted here as the bundle's rootfs) with all
# the volumes: tmpfs, rslave and rshared (rootfsPropagation shared), host
# mounts propagated into both, a container mount propagated out.
case_overlay_setup() {
	make_source "$hs"
	make_source "$hp"
	ROOTFS=overlay ROOTPROP=shared SYSADMIN=1 CONF=$conf_external
	VOLUMES="[$(vol_tmpfs),$(vol_bind /vol/slave "$hs" rslave),$(vol_bind /vol/shared "$hp" rshared)]"
}
case_overlay_started() {
	case_rslave_started
	case_rshared_started
}
case_overlay_probes() {
	case_rslave_probes
	case_rshared_probes
}

# rslave-late: rootfsPropagation rslave and a host directory bound rslave,
# with nothing mounted below it until the container is restored (so runc's
# restore destroys no host mount): the probes, run after every restore,
# mount on the host below the source and look for it in the restored
# container (host->ct after the restore), and mount in the container (which
# must not reach the host).
case_rslave_late_setup() {
	make_source "$hs"
	ROOTFS=dir VOLUMES="[$(vol_tmpfs),$(vol_bind /vol/slave "$hs" rslave)]" ROOTPROP=rslave SYSADMIN=1 CONF=$conf_external
}
case_rslave_late_started() { :; }
case_rslave_late_probes() { case_rslave_probes; }

all_cases="plain overlay rslave rshared rshared-slave-root shared-root rslave-late"

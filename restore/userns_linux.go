package restore

import (
	"errors"
	"fmt"
	"strings"

	"github.com/mntv2/mntv2/internal/mntns"
	"github.com/mntv2/mntv2/internal/nsexec"
	"golang.org/x/sys/unix"
)

// setIDMap idmaps a detached mount never attached (mount_setattr with
// MOUNT_ATTR_IDMAP, Linux 5.12; tmpfs since 6.3) with a user namespace of
// the maps it had, made once per maps by a process that is gone after.
func (a *applier) setIDMap(s Step) error {
	key := s.IDMap.String()
	userns, ok := a.idmapNS[key]
	if !ok {
		var err error
		if userns, err = nsexec.NewUserNamespace(*s.IDMap); err != nil {
			return err
		}
		a.idmapNS[key] = userns
	}
	err := a.sys("mount_setattr(MOUNT_ATTR_IDMAP)", func() error {
		return unix.MountSetattr(a.fds[s.Handle], "", unix.AT_EMPTY_PATH,
			&unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns)})
	})
	if errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("idmap %s: %w (the filesystem may not support idmapped mounts on this kernel)", key, err)
	}
	return err
}

// opener is the fsopen helper in the user namespace owning namespace ns:
// Options.UserNS, or the live namespace's owner. One runs per user
// namespace, until the applier is closed.
func (a *applier) opener(ns uint32) (*nsexec.Opener, error) {
	userns := a.userNS
	if userns < 0 {
		nsfd, ok := a.nsFds[ns]
		if !ok {
			return nil, fmt.Errorf("no user namespace owns namespace %d here (it was owned by the container's)", ns)
		}
		fd, err := mntns.Owner(nsfd)
		if err != nil {
			return nil, err
		}
		defer unix.Close(fd)
		userns = fd
	}
	var st unix.Stat_t
	if err := unix.Fstat(userns, &st); err != nil {
		return nil, sysErr("fstat(user namespace)", err)
	}
	if o := a.openers[st.Ino]; o != nil {
		return o, nil
	}
	o, err := nsexec.NewOpener(userns)
	if err != nil {
		return nil, err
	}
	a.openers[st.Ino] = o
	return o, nil
}

// lockedFlags explains a set-flags that failed with EPERM in a namespace
// owned by a user namespace: flags a mount had when its namespace was
// copied into the user namespace are locked (MNT_LOCK_READONLY, _NOSUID,
// _NODEV, _NOEXEC, _ATIME), and nobody can clear them.
func lockedFlags(s Step, err error) error {
	if !errors.Is(err, unix.EPERM) {
		return err
	}
	return fmt.Errorf("%w: its flags (to be %s) are locked: the mount comes from a copy into the user namespace, where the flags it had then cannot be cleared (give the restore root the images' flags: %s)",
		err, s.Flags, strings.TrimSpace(s.Flags.String()))
}

// openUserNS opens Options.UserNS (-1 when not given) and checks it
// against the plan: given exactly when the images' namespaces were owned
// by a container's user namespace, and with that namespace's maps.
func openUserNS(plan *Plan, opt Options) (int, error) {
	var owned []string
	for _, id := range plan.Namespaces {
		if m := plan.Owners[id]; m != nil {
			owned = append(owned, fmt.Sprintf("namespace %d (maps %s)", id, m))
		}
	}
	if opt.UserNS == "" {
		if len(owned) > 0 {
			return -1, fmt.Errorf("the images' %s were owned by the container's user namespace: give --userns PATH, that user namespace as the container manager made it again (e.g. /proc/PID/ns/user of its init)", strings.Join(owned, ", "))
		}
		return -1, nil
	}
	if len(owned) == 0 {
		return -1, fmt.Errorf("--userns %s: the images' mount namespaces were owned by the dumper's user namespace, not a container's (no userns-*.img for their tasks)", opt.UserNS)
	}
	fd, err := unix.Open(opt.UserNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("--userns: %w", err)
	}
	if t, err := mntns.Type(fd); err != nil || t != unix.CLONE_NEWUSER {
		unix.Close(fd)
		return -1, fmt.Errorf("--userns %s is not a user namespace (an nsfs file such as /proc/PID/ns/user)", opt.UserNS)
	}
	got, err := nsexec.Maps(fd)
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("--userns %s: %w", opt.UserNS, err)
	}
	for _, id := range plan.Namespaces {
		if m := plan.Owners[id]; m != nil && m.String() != got.String() {
			unix.Close(fd)
			return -1, fmt.Errorf("--userns %s has maps %s; the images' namespace %d was owned by one with maps %s", opt.UserNS, got, id, m)
		}
	}
	return fd, nil
}

// ownedNamespace makes this thread's new mount namespace owned by
// Options.UserNS: a copy of the base namespace made by a process inside
// the user namespace (every mount of it locked, as in a container
// runtime's), entered; as unshareNewer, one whose id is above the base's.
func (a *applier) ownedNamespace() (int, error) {
	return a.newerNamespace(func(int) (int, error) {
		var nsfd int
		err := a.sys("setns(CLONE_NEWNS)", func() error {
			var err error
			if nsfd, err = nsexec.NewMountNamespace(a.userNS, a.baseNS); err != nil {
				return err
			}
			if err = unix.Setns(nsfd, unix.CLONE_NEWNS); err != nil {
				unix.Close(nsfd)
			}
			return err
		})
		return nsfd, err
	})
}

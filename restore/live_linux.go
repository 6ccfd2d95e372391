package restore

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/internal/beneath"
	"golang.org/x/sys/unix"
)

// liveState is what Apply keeps for a live plan's namespace.
type liveState struct {
	opened bool
	want   map[uint32]Handle // image mount id -> handle, for every open-live step
}

// startLive enters the namespaces ids of a live plan (once each: Advance
// may have entered some), after noting, the first time, which restored
// mounts each open-live step wants.
func (a *applier) startLive(ids []uint32) error {
	if a.live == nil {
		a.live = map[uint32]*liveState{}
		for _, s := range a.plan.Steps {
			if s.Op != OpOpenLive {
				continue
			}
			st := a.live[s.NS]
			if st == nil {
				st = &liveState{want: map[uint32]Handle{}}
				a.live[s.NS] = st
			}
			st.want[s.Mount] = s.Handle
		}
	}
	for _, id := range ids {
		if a.workers[id] != nil {
			continue // started by Early.Advance
		}
		ln := a.opt.Live[id]
		if ln == nil {
			return fmt.Errorf("namespace %d: not found among the restored namespaces", id)
		}
		fd, err := unix.Open(ln.NSPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return sysErr("open "+ln.NSPath, err)
		}
		a.nsFds[id] = fd
		w, err := startWorker(id, fd)
		if err != nil {
			return err
		}
		a.workers[id] = w
	}
	return nil
}

// openLive runs on the namespace's worker. The first open-live step of a
// namespace opens every mount the plan wants there: by path when each is
// the topmost mount at its mountpoint, else by peeling the whole tree into
// a parking tmpfs, mount by mount from the top, and putting it back.
func (a *applier) openLive(s Step) error {
	st := a.live[s.NS]
	if st.opened {
		return nil
	}
	st.opened = true
	ln := a.opt.Live[s.NS]
	exposed, err := wantedExposed(ln, st)
	if err != nil {
		return err
	}
	if exposed {
		// Each is the topmost mount at its path in the tree just read; the
		// caller verifies the whole namespace afterwards, so no statx of
		// each (10,000 syscalls on a 10,000-mount tree).
		for id, h := range st.want {
			fd, err := a.openByPath(ln.Mounts[id])
			if err != nil {
				return err
			}
			a.fds[h] = fd
		}
		return nil
	}
	return a.peel(ln, st)
}

// wantedExposed says whether each restored mount the plan wants in ln is
// the topmost at its mountpoint (opened by path, not peeled).
func wantedExposed(ln *LiveNamespace, st *liveState) (bool, error) {
	exposed := true
	idx := childIndex(ln.Tree)
	for id := range st.want {
		m := ln.Mounts[id]
		if m == nil {
			return false, fmt.Errorf("image mount %d: no restored mount at its place", id)
		}
		if !isExposed(m, idx) {
			exposed = false
		}
	}
	return exposed, nil
}

type mountAt struct {
	parent     *forest.Mount
	mountpoint string
}

// childIndex maps each mount and mountpoint to the child mounted there.
func childIndex(ns *forest.Namespace) map[mountAt]*forest.Mount {
	idx := make(map[mountAt]*forest.Mount, len(ns.Mounts))
	for _, m := range ns.Mounts {
		if m.Parent != nil {
			idx[mountAt{m.Parent, m.Mountpoint}] = m
		}
	}
	return idx
}

// isExposed says whether path resolution of m's mountpoint ends on m: no
// mount covers it or lies on top of it.
func isExposed(m *forest.Mount, idx map[mountAt]*forest.Mount) bool {
	cur := m.NS.Root
	at := func(p string) {
		for c := idx[mountAt{cur, p}]; c != nil; c = idx[mountAt{cur, p}] {
			cur = c
		}
	}
	at("/")
	p := ""
	for _, comp := range strings.Split(strings.Trim(m.Mountpoint, "/"), "/") {
		if comp == "" {
			continue
		}
		p += "/" + comp
		at(p)
	}
	return cur == m
}

// openByPath opens the topmost mount at m's mountpoint.
func (a *applier) openByPath(m *forest.Mount) (int, error) {
	fd, err := a.sysFd("open_tree", func() (int, error) {
		return unix.OpenTree(unix.AT_FDCWD, m.Mountpoint, unix.OPEN_TREE_CLOEXEC|unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		return -1, fmt.Errorf("mount %d at %s: %w", m.ID, m.Mountpoint, err)
	}
	return fd, nil
}

// openExposed opens the topmost mount at m's mountpoint, checks it is m,
// and says whether its root is a directory.
func (a *applier) openExposed(m *forest.Mount) (fd int, dir bool, err error) {
	fd, err = a.openByPath(m)
	if err != nil {
		return -1, false, err
	}
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID|unix.STATX_TYPE, &stx); err != nil {
		unix.Close(fd)
		return -1, false, sysErr("statx", err)
	}
	if stx.Mnt_id != uint64(m.ID) {
		unix.Close(fd)
		return -1, false, fmt.Errorf("mount %d at %s: found mount %d there instead", m.ID, m.Mountpoint, stx.Mnt_id)
	}
	return fd, stx.Mode&unix.S_IFMT == unix.S_IFDIR, nil
}

// peel opens every mount of a namespace: in reverse attach order each is
// the topmost at its mountpoint, so it is opened by path and moved into a
// parking tmpfs stacked on the root; then all go back in attach order,
// keeping their mount ids. (Stacking the parked mounts on one another, to
// spare a mountpoint each, was tried: binds of one root share a mountpoint
// dentry, and 10,000 of them stacked made the moves quadratic.) The tree
// is all private (restored without sharing), so no move propagates. On
// failure every parked mount is put back and the park unmounted: the tree
// is as it was.
func (a *applier) peel(ln *LiveNamespace, st *liveState) (err error) {
	order := attachOrder(ln.Tree)
	fds := make(map[*forest.Mount]int, len(order))
	parked := map[*forest.Mount]bool{}
	rootfd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return sysErr("open(/)", err)
	}
	defer unix.Close(rootfd)
	// putBack moves m from the park to its mountpoint under its parent.
	putBack := func(m *forest.Mount, count bool) error {
		parent := rootfd
		if !m.Parent.IsRoot() {
			pfd, ok := fds[m.Parent]
			if !ok {
				// Rolling back: the parent was never moved, and whatever
				// lay above m is parked, so its path leads to its place.
				return unix.MoveMount(fds[m], "", unix.AT_FDCWD, m.Mountpoint, unix.MOVE_MOUNT_F_EMPTY_PATH)
			}
			parent = pfd
		}
		target, name, flags := parent, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH
		switch r := relTo(m.Mountpoint, m.Parent.Mountpoint); {
		case r == "":
		case !strings.Contains(r, "/"):
			// One component, resolved by move_mount without following
			// a final symlink (no MOVE_MOUNT_T_SYMLINKS).
			name, flags = r, unix.MOVE_MOUNT_F_EMPTY_PATH
		default:
			t, err := beneath.Open(parent, r, unix.O_PATH, 0)
			if err != nil {
				return sysErr("openat2", fmt.Errorf("mountpoint of mount %d (%s): %w", m.ID, m.Mountpoint, err))
			}
			defer unix.Close(t)
			target = t
		}
		move := func() error {
			return unix.MoveMount(fds[m], "", target, name, flags)
		}
		if !count {
			return move()
		}
		if err := a.sys("move_mount", move); err != nil {
			return fmt.Errorf("put back mount %d (%s): %w", m.ID, m.Mountpoint, err)
		}
		return nil
	}
	park := -1
	defer func() {
		if err != nil {
			// Put back what is parked, parents first, uncounted.
			for _, m := range order[1:] {
				if parked[m] {
					_ = putBack(m, false)
				}
			}
		}
		if park >= 0 {
			if cerr := unix.Fchdir(park); cerr == nil {
				uerr := a.sys("umount2(MNT_DETACH)", func() error { return unix.Unmount(".", unix.MNT_DETACH) })
				if uerr != nil {
					_ = unix.Unmount(".", unix.MNT_DETACH) // never leave the park on the root
					if err == nil {
						err = uerr
					}
				}
				_ = unix.Chdir("/")
			}
			unix.Close(park)
		}
		wanted := make(map[*forest.Mount]bool, len(st.want))
		for id := range st.want {
			wanted[ln.Mounts[id]] = true
		}
		for m, fd := range fds {
			if err != nil || !wanted[m] {
				unix.Close(fd)
			}
		}
		if err == nil {
			for id, h := range st.want {
				a.fds[h] = fds[ln.Mounts[id]]
			}
		}
	}()
	// The root is never parked: open it first, as the topmost mount at
	// "/" before anything is stacked there (a peer group of namespace
	// roots shares through it).
	for id := range st.want {
		if ln.Mounts[id] == ln.Tree.Root {
			fd, err := a.openByPath(ln.Tree.Root)
			if err != nil {
				return err
			}
			fds[ln.Tree.Root] = fd
		}
	}
	if park, err = a.newPark(); err != nil {
		return err
	}
	for i := len(order) - 1; i >= 1; i-- {
		m := order[i]
		fd, dir, err := a.openExposed(m)
		if err != nil {
			return err
		}
		fds[m] = fd
		name := strconv.Itoa(i)
		if _, err := beneath.Create(park, name, dir); err != nil {
			return err
		}
		if err := a.sys("move_mount", func() error {
			return unix.MoveMount(fd, "", park, name, unix.MOVE_MOUNT_F_EMPTY_PATH)
		}); err != nil {
			return fmt.Errorf("park mount %d (%s): %w", m.ID, m.Mountpoint, err)
		}
		parked[m] = true
	}
	for _, m := range order[1:] {
		if err := putBack(m, true); err != nil {
			return err
		}
		parked[m] = false
	}
	return nil
}

// newPark mounts an empty private tmpfs stacked on the worker's root: a
// place inside the namespace to move mounts to (move_mount needs an
// attached target). Paths from "/" still start below it.
func (a *applier) newPark() (int, error) {
	fs, err := a.sysFd("fsopen", func() (int, error) { return unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC) })
	if err != nil {
		return -1, err
	}
	defer unix.Close(fs)
	if err := a.sys("fsconfig", func() error { return unix.FsconfigCreate(fs) }); err != nil {
		return -1, err
	}
	park, err := a.sysFd("fsmount", func() (int, error) { return unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, 0) })
	if err != nil {
		return -1, err
	}
	if err := a.sys("move_mount", func() error {
		return unix.MoveMount(park, "", unix.AT_FDCWD, "/", unix.MOVE_MOUNT_F_EMPTY_PATH)
	}); err != nil {
		unix.Close(park)
		return -1, err
	}
	return park, nil
}

// unstack replaces a helper mount of the tree by a detached private clone
// and unmounts it from the tree (it is a leaf: nothing is on or under it).
func (a *applier) unstack(s Step) error {
	live := a.fds[s.Handle]
	clone, err := a.sysFd("open_tree", func() (int, error) {
		return unix.OpenTree(live, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	})
	if err != nil {
		return err
	}
	a.fds[s.Handle] = clone
	if err := a.sys("mount_setattr(MS_PRIVATE)", func() error {
		return unix.MountSetattr(clone, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Propagation: unix.MS_PRIVATE})
	}); err != nil {
		unix.Close(live)
		return err
	}
	if err := unix.Fchdir(live); err != nil {
		unix.Close(live)
		return sysErr("fchdir", err)
	}
	err = a.sys("umount2(MNT_DETACH)", func() error { return unix.Unmount(".", unix.MNT_DETACH) })
	unix.Close(live)
	if cerr := unix.Chdir("/"); err == nil && cerr != nil {
		err = sysErr("chdir", cerr)
	}
	return err
}

// openHost opens, in the restorer's mount namespace (this thread's), the
// host mount on which s.Path lies ("": the restore root), without a clone:
// the host side of external sharing. It is found by the path, never by a
// peer group number, and must be in a peer group or have a master.
func (a *applier) openHost(s Step) error {
	p := s.Path
	if p == "" {
		p = a.opt.Root
	}
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, p, 0, unix.STATX_MNT_ID, &stx); err != nil {
		return sysErr("statx", fmt.Errorf("host path %s: %w", p, err))
	}
	if a.hostTree == nil {
		nm, err := forest.ReadMountinfoFile("/proc/thread-self/mountinfo", 0)
		if err != nil {
			return fmt.Errorf("this host's mounts: %w", err)
		}
		a.hostTree = make(map[uint64]forest.Mount, len(nm.Mounts))
		for _, m := range nm.Mounts {
			a.hostTree[uint64(m.ID)] = m
		}
	}
	m, ok := a.hostTree[stx.Mnt_id]
	if !ok {
		return fmt.Errorf("host path %s: its mount %d is not in this namespace's mountinfo", p, stx.Mnt_id)
	}
	if m.PeerGroup == 0 && m.Master == 0 {
		return fmt.Errorf("the host mount %s (mount %d), on which %s lies, is in no peer group and has no master: the host's side of the sharing the images record is gone", m.Mountpoint, m.ID, p)
	}
	fd, err := a.sysFd("open_tree", func() (int, error) {
		return unix.OpenTree(unix.AT_FDCWD, m.Mountpoint, unix.OPEN_TREE_CLOEXEC|unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		return fmt.Errorf("host mount %s: %w", m.Mountpoint, err)
	}
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &stx); err != nil || stx.Mnt_id != uint64(m.ID) {
		unix.Close(fd)
		return fmt.Errorf("host mount %s (mount %d) of %s is covered by another mount", m.Mountpoint, m.ID, p)
	}
	a.fds[s.Handle] = fd
	return nil
}

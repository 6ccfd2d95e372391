package forest

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"

	"github.com/mntv2/mntv2/internal/mntns"
	"golang.org/x/sys/unix"
)

// ReadMountinfoFile reads a saved mountinfo file as namespace nsID.
func ReadMountinfoFile(path string, nsID uint32) (NamespaceMounts, error) {
	f, err := os.Open(path)
	if err != nil {
		return NamespaceMounts{}, err
	}
	defer f.Close()
	// One large read: a mountinfo of thousands of mounts read 4 KiB at a
	// time (bufio's default) costs the kernel a restart of its listing
	// per read, most of the time reading takes.
	data, err := readAll(f)
	if err != nil {
		return NamespaceMounts{}, fmt.Errorf("%s: %w", path, err)
	}
	nm, err := FromMountinfo(bytes.NewReader(data), nsID)
	if err != nil {
		return NamespaceMounts{}, fmt.Errorf("%s: %w", path, err)
	}
	return nm, nil
}

// ReadPID reads the mount namespace of a process, as namespace nsID. Only
// the mounts visible from the process's root are listed.
func ReadPID(pid int, nsID uint32) (NamespaceMounts, error) {
	nm, err := ReadMountinfoFile("/proc/"+strconv.Itoa(pid)+"/mountinfo", nsID)
	if err != nil {
		return nm, err
	}
	if mfd, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
		nm.Owner, err = ownerOf(mfd)
		unix.Close(mfd)
		if err != nil {
			return nm, fmt.Errorf("process %d: the owner of its mount namespace: %w", pid, err)
		}
		nm.OwnerKnown = true
	}
	for _, m := range nm.Mounts {
		if m.IDMap == nil {
			continue
		}
		// Idmapped mounts: their maps, by statmount in the process's
		// namespace.
		fd, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nm, err
		}
		id, err := mntns.ID(fd)
		unix.Close(fd)
		if err != nil {
			return nm, fmt.Errorf("process %d: the id of its mount namespace: %w", pid, err)
		}
		return nm, fillIDMaps(&nm, id)
	}
	return nm, nil
}

// ReadNamespaceFile reads the whole mount namespace that nsPath (a
// /proc/PID/ns/mnt or an nsfs bind of one) refers to, as namespace nsID.
// It enters the namespace on a locked OS thread that is thrown away after.
func ReadNamespaceFile(nsPath string, nsID uint32) (NamespaceMounts, error) {
	fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return NamespaceMounts{}, &os.PathError{Op: "open", Path: nsPath, Err: err}
	}
	defer unix.Close(fd)
	// The namespace may have no /proc of its own (a restored tree before
	// its processes mount one): keep this one open and read the entering
	// thread's mountinfo through it. What mountinfo lists depends on the
	// reading task's namespace and root, not on where proc is mounted.
	proc, err := unix.Open("/proc", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return NamespaceMounts{}, &os.PathError{Op: "open", Path: "/proc", Err: err}
	}
	defer unix.Close(proc)
	var nm NamespaceMounts
	err = InNamespace(fd, func() error {
		mfd, err := unix.Openat(proc, "thread-self/mountinfo", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return &os.PathError{Op: "open", Path: "/proc/thread-self/mountinfo", Err: err}
		}
		f := os.NewFile(uintptr(mfd), "/proc/thread-self/mountinfo")
		defer f.Close()
		data, err := readAll(f)
		if err != nil {
			return err
		}
		if nm, err = FromMountinfo(bytes.NewReader(data), nsID); err != nil {
			return err
		}
		return fillIDMaps(&nm, 0)
	})
	if err != nil {
		return NamespaceMounts{}, fmt.Errorf("mount namespace %s: %w", nsPath, err)
	}
	if nm.Owner, err = ownerOf(fd); err != nil {
		return NamespaceMounts{}, fmt.Errorf("mount namespace %s: its owner: %w", nsPath, err)
	}
	nm.OwnerKnown = true
	return nm, nil
}

// InNamespace runs fn on a new OS thread that has entered the mount
// namespace nsFD (see mntns.Run).
func InNamespace(nsFD int, fn func() error) error { return mntns.Run(nsFD, fn) }

// ReadNamespaceFiles reads the namespaces at paths (namespace id -> nsfs
// file, as ReadNamespaceFile takes it), in increasing id order.
func ReadNamespaceFiles(paths map[uint32]string) ([]NamespaceMounts, error) {
	ids := make([]uint32, 0, len(paths))
	for id := range paths {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	found := make([]NamespaceMounts, 0, len(ids))
	for _, id := range ids {
		nm, err := ReadNamespaceFile(paths[id], id)
		if err != nil {
			return nil, err
		}
		found = append(found, nm)
	}
	return found, nil
}

// readAll reads f to its end in reads of at least 256 KiB.
func readAll(f *os.File) ([]byte, error) {
	buf := make([]byte, 0, 256<<10)
	for {
		if cap(buf)-len(buf) < 64<<10 {
			buf = slices.Grow(buf, cap(buf))
		}
		n, err := f.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF || err == nil && n == 0 {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

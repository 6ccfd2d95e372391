package forest

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"

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
	nm, err := parseMountinfoFile(f, nsID)
	if err != nil {
		return NamespaceMounts{}, fmt.Errorf("%s: %w", path, err)
	}
	return nm, nil
}

// mountinfoPiece is how much of a mountinfo file one read asks for.
// This kernel finds where a read of /proc/PID/mountinfo left off by the
// mount's id (a tree lookup): pieces cost little more than one large read
// (1.62 against 1.39 ms at 1021 mounts in reads of 4 KiB).
const mountinfoPiece = 16 << 10

// parseMountinfoFile reads f, a mountinfo file, as namespace nsID. Each piece
// read is parsed on another goroutine while the next is read: the kernel
// takes about 1.4 us a mount to write mountinfo, and the parse (a third of
// that) is mostly done when the last piece comes.
func parseMountinfoFile(f *os.File, nsID uint32) (NamespaceMounts, error) {
	p := newMountinfoParser(nsID)
	pieces := make(chan []byte, 64)
	var perr error
	parsed := make(chan struct{})
	go func() {
		defer close(parsed)
		for b := range pieces {
			if perr == nil {
				perr = p.feed(b)
			}
		}
	}()
	var rerr error
	for {
		b := make([]byte, mountinfoPiece)
		n, err := f.Read(b)
		if n > 0 {
			pieces <- b[:n]
		}
		if err == io.EOF || err == nil && n == 0 {
			break
		}
		if err != nil {
			rerr = err
			break
		}
	}
	close(pieces)
	<-parsed
	if rerr != nil {
		return NamespaceMounts{}, rerr
	}
	if perr != nil {
		return NamespaceMounts{}, perr
	}
	return p.finish()
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
		if nm, err = parseMountinfoFile(f, nsID); err != nil {
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
	// Each on a thread of its own: the kernel writes each mountinfo.
	found := make([]NamespaceMounts, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	sem := make(chan struct{}, max(2, runtime.NumCPU()))
	for i, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			found[i], errs[i] = ReadNamespaceFile(paths[id], id)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return found, nil
}

package images

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Dir is an open images directory. Every file is opened relative to the
// directory's fd, by a plain name, without following symlinks.
type Dir struct {
	f      *os.File
	Limits Limits
}

// Open opens the images directory at path.
func Open(path string) (*Dir, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open images directory", Path: path, Err: err}
	}
	return &Dir{f: os.NewFile(uintptr(fd), path), Limits: DefaultLimits}, nil
}

// FromFile uses an already open directory, as CRIU hands one over
// (CRTOOLS_IMAGE_DIR is /proc/<pid>/fd/<n>). The Dir takes a duplicate: the
// caller keeps f.
func FromFile(f *os.File) (*Dir, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "dup", Path: f.Name(), Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		unix.Close(fd)
		return nil, &os.PathError{Op: "open images directory", Path: f.Name(), Err: unix.ENOTDIR}
	}
	return &Dir{f: os.NewFile(uintptr(fd), f.Name()), Limits: DefaultLimits}, nil
}

// Close releases the directory fd.
func (d *Dir) Close() error { return d.f.Close() }

// Path is the path the directory was opened by.
func (d *Dir) Path() string { return d.f.Name() }

// Fd is the directory's fd, valid until Close.
func (d *Dir) Fd() int { return int(d.f.Fd()) }

func checkName(name string) error {
	if name == "" || name == "." || name == ".." || filepath.Base(name) != name {
		return fmt.Errorf("image name %q is not a plain file name", name)
	}
	return nil
}

// OpenFile opens a regular file of the directory for reading.
func (d *Dir) OpenFile(name string) (*os.File, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	fd, err := unix.Openat(d.Fd(), name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, &FormatError{File: name, Offset: -1, Err: ErrMissingFile}
		}
		return nil, &os.PathError{Op: "openat", Path: filepath.Join(d.Path(), name), Err: err}
	}
	f := os.NewFile(uintptr(fd), name)
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, &FormatError{File: name, Offset: -1, Err: fmt.Errorf("not a regular file (%v)", st.Mode().Type())}
	}
	return f, nil
}

// Exists says whether the directory holds an entry called name.
func (d *Dir) Exists(name string) bool {
	var st unix.Stat_t
	return checkName(name) == nil && unix.Fstatat(d.Fd(), name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
}

// ReadImage reads and frames one image file.
func (d *Dir) ReadImage(name string, t Type) (*Image, error) {
	f, err := d.OpenFile(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Decode(f, name, t, d.Limits)
}

// ReadAll reads a whole file (a tmpfs content image, say) up to the file cap.
func (d *Dir) ReadAll(name string) ([]byte, error) {
	f, err := d.OpenFile(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, d.Limits.MaxFile+1))
	if err != nil {
		return nil, &FormatError{File: name, Offset: -1, Err: err}
	}
	if int64(len(data)) > d.Limits.MaxFile {
		return nil, &FormatError{File: name, Offset: -1, Err: fmt.Errorf("%w: exceeds the %d byte cap", ErrTooLarge, d.Limits.MaxFile)}
	}
	return data, nil
}

// Inventory reads inventory.img.
func (d *Dir) Inventory() (InventoryInfo, error) {
	img, err := d.ReadImage("inventory.img", Inventory)
	if err != nil {
		return InventoryInfo{}, err
	}
	return img.Inventory()
}

// Tasks reads pstree.img.
func (d *Dir) Tasks() ([]Task, error) {
	img, err := d.ReadImage("pstree.img", Pstree)
	if err != nil {
		return nil, err
	}
	return img.Tasks()
}

// TaskIDs reads ids-<pid>.img.
func (d *Dir) TaskIDs(pid uint32) (TaskIDs, error) {
	img, err := d.ReadImage(IDsFile(pid), IDs)
	if err != nil {
		return TaskIDs{}, err
	}
	return img.TaskIDs()
}

// RootMountNamespace is the mount namespace id of the root task (the first
// task of pstree.img, as CRIU restores it first): the namespace whose root
// mount is the restore root (criu/mount.c rst_mnt_is_root). ok is false
// when the images do not say (no pstree or ids image).
func (d *Dir) RootMountNamespace() (id uint32, ok bool, err error) {
	if !d.Exists("pstree.img") {
		return 0, false, nil
	}
	tasks, err := d.Tasks()
	if err != nil || len(tasks) == 0 {
		return 0, false, err
	}
	if !d.Exists(IDsFile(tasks[0].Pid)) {
		return 0, false, nil
	}
	ids, err := d.TaskIDs(tasks[0].Pid)
	if err != nil {
		return 0, false, err
	}
	return ids.MntNS, ids.MntNS != 0, nil
}

// MountNamespaceOwners says, for each mount namespace of the images'
// tasks, the maps of the user namespace that owned it: the user namespace
// of its tasks, when CRIU dumped that user namespace (userns-<id>.img: the
// container had its own); nil for the dumper's user namespace. CRIU
// restores one user namespace, the root task's.
func (d *Dir) MountNamespaceOwners() (map[uint32]*IDMaps, error) {
	if !d.Exists("pstree.img") {
		return nil, nil
	}
	tasks, err := d.Tasks()
	if err != nil {
		return nil, err
	}
	out := map[uint32]*IDMaps{}
	maps := map[uint32]*IDMaps{}
	for _, t := range tasks {
		if !d.Exists(IDsFile(t.Pid)) {
			continue // a zombie or helper
		}
		ids, err := d.TaskIDs(t.Pid)
		if err != nil {
			return nil, err
		}
		if ids.MntNS == 0 || ids.UserNS == 0 {
			continue
		}
		m, seen := maps[ids.UserNS]
		if !seen {
			if d.Exists(UsernsFile(ids.UserNS)) {
				img, err := d.ReadImage(UsernsFile(ids.UserNS), Userns)
				if err != nil {
					return nil, err
				}
				got, err := img.IDMaps()
				if err != nil {
					return nil, err
				}
				m = &got
			}
			maps[ids.UserNS] = m
		}
		if _, done := out[ids.MntNS]; !done {
			out[ids.MntNS] = m
		}
	}
	return out, nil
}

// FSInfo reads fs-<pid>.img.
func (d *Dir) FSInfo(pid uint32) (FSInfo, error) {
	img, err := d.ReadImage(FSFile(pid), FS)
	if err != nil {
		return FSInfo{}, err
	}
	return img.FSInfo()
}

// Mounts reads mountpoints-<nsID>.img.
func (d *Dir) Mounts(nsID uint32) ([]Mount, error) {
	img, err := d.ReadImage(MountpointsFile(nsID), Mountpoints)
	if err != nil {
		return nil, err
	}
	return img.Mounts()
}

// MountNamespaces lists the mount namespace ids that have a mountpoints
// image, in increasing order.
func (d *Dir) MountNamespaces() ([]uint32, error) {
	names, err := d.Names()
	if err != nil {
		return nil, err
	}
	var ids []uint32
	for _, n := range names {
		// mountpoints-<id>.img, the id in decimal digits only.
		s, ok := strings.CutPrefix(n, "mountpoints-")
		if ok {
			s, ok = strings.CutSuffix(s, ".img")
		}
		if !ok || s == "" || len(s) > 10 || strings.Trim(s, "0123456789") != "" {
			continue
		}
		id, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			continue
		}
		ids = append(ids, uint32(id))
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids, nil
}

// Names lists the entries of the directory.
func (d *Dir) Names() ([]string, error) {
	// Read through a fresh fd: directory offsets are shared by dups.
	fd, err := unix.Openat(d.Fd(), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "openat", Path: d.Path(), Err: err}
	}
	f := os.NewFile(uintptr(fd), d.Path())
	defer f.Close()
	return f.Readdirnames(-1)
}

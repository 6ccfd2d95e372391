package images

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// WriteFile replaces (or creates) name in the directory with data, crash
// safely: the bytes go to a temporary file that is fsynced, renamed over name,
// and the directory is fsynced. A reader sees the old or the new file, never
// a mix.
func (d *Dir) WriteFile(name string, data []byte, perm os.FileMode) error {
	if err := d.WriteFileUnsynced(name, data, perm); err != nil {
		return err
	}
	return d.Sync()
}

// WriteFileUnsynced is WriteFile without the directory's fsync: the new
// file's bytes are on disk, its name may not be until the caller syncs the
// directory (one Sync then serves several writes, or none where either
// name is fine after a crash).
func (d *Dir) WriteFileUnsynced(name string, data []byte, perm os.FileMode) error {
	return d.writeFile(name, data, perm, true)
}

// WriteFileNoSync is WriteFileUnsynced without the file's fsync either: a
// reader sees the old or the new file, but after a crash the new one may
// have lost its bytes. For files a recovery does without (each fsync is a
// journal commit, which waits for whatever else the filesystem writes).
func (d *Dir) WriteFileNoSync(name string, data []byte, perm os.FileMode) error {
	return d.writeFile(name, data, perm, false)
}

func (d *Dir) writeFile(name string, data []byte, perm os.FileMode, sync bool) error {
	if err := checkName(name); err != nil {
		return err
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := ".mntv2-tmp-" + hex.EncodeToString(rnd[:]) + "-" + name
	full := filepath.Join(d.Path(), name)
	fd, err := unix.Openat(d.Fd(), tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		return &os.PathError{Op: "create", Path: full, Err: err}
	}
	f := os.NewFile(uintptr(fd), tmp)
	ok := false
	defer func() {
		if !ok {
			f.Close()
			unix.Unlinkat(d.Fd(), tmp, 0)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return &os.PathError{Op: "write", Path: full, Err: err}
	}
	if sync {
		if err := f.Sync(); err != nil {
			return &os.PathError{Op: "fsync", Path: full, Err: err}
		}
	}
	if err := f.Close(); err != nil {
		return &os.PathError{Op: "close", Path: full, Err: err}
	}
	if err := unix.Renameat(d.Fd(), tmp, d.Fd(), name); err != nil {
		return &os.PathError{Op: "rename", Path: full, Err: err}
	}
	ok = true
	return nil
}

// WriteImage writes an image with WriteFile.
func (d *Dir) WriteImage(img *Image) error {
	return d.WriteFile(img.File, img.Bytes(), 0o600)
}

// Sync flushes the directory's entries to disk.
func (d *Dir) Sync() error {
	if err := unix.Fsync(d.Fd()); err != nil {
		return &os.PathError{Op: "fsync", Path: d.Path(), Err: err}
	}
	return nil
}

// Remove unlinks a file of the directory.
func (d *Dir) Remove(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := unix.Unlinkat(d.Fd(), name, 0); err != nil {
		return &os.PathError{Op: "unlink", Path: filepath.Join(d.Path(), name), Err: err}
	}
	return nil
}

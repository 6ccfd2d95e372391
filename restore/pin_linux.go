package restore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Pins lists the pinned namespaces in a pin dir: file names mntns-<ID>.
func Pins(pinDir string) ([]string, error) {
	entries, err := os.ReadDir(pinDir)
	if err != nil {
		return nil, err
	}
	var pins []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "mntns-") {
			pins = append(pins, e.Name())
		}
	}
	slices.Sort(pins)
	return pins, nil
}

// Release undoes pins: each PIN/mntns-<ID> that is an nsfs mount is
// unmounted and removed, so the namespace ends with its last user. With no
// names, every pin of the dir is released. It returns the pins released.
func Release(pinDir string, names ...string) ([]string, error) {
	if len(names) == 0 {
		var err error
		if names, err = Pins(pinDir); err != nil {
			return nil, err
		}
	}
	var done []string
	var errs []error
	for _, name := range names {
		if err := releasePin(filepath.Join(pinDir, name)); err != nil {
			errs = append(errs, err)
			continue
		}
		done = append(done, name)
	}
	return done, errors.Join(errs...)
}

func releasePin(p string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("%s: not a pinned namespace (no nsfs mount on it); left alone", p)
	}
	// A pin may be mounted more than once (two restores racing): unmount
	// until only the file is left.
	for st.Type == unix.NSFS_MAGIC {
		if err := unix.Unmount(p, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
			return fmt.Errorf("%s: umount: %w", p, err)
		}
		if err := unix.Statfs(p, &st); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	if err := os.Remove(p); err != nil {
		return err
	}
	return nil
}

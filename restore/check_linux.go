package restore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/mntv2/mntv2/images"
	"golang.org/x/sys/unix"
)

// Preflight checks, without changing anything, what Apply needs: root
// privileges, the kernel's mount API (MOVE_MOUNT_SET_GROUP: 5.15), a
// restore root, every external source and tmpfs archive, and a pin dir
// without the pins it will make. It reports every problem at once.
func Preflight(plan *Plan, opt Options) error {
	var errs []error
	if os.Geteuid() != 0 {
		errs = append(errs, errors.New("mntv2 restore needs root (CAP_SYS_ADMIN)"))
	}
	if err := kernelSupport(opt.Hooks.HideFeature); err != nil {
		errs = append(errs, err)
	}
	if st, err := os.Stat(opt.Root); err != nil {
		errs = append(errs, fmt.Errorf("restore root: %w", err))
	} else if !st.IsDir() {
		errs = append(errs, fmt.Errorf("restore root %s is not a directory", opt.Root))
	}
	if fd, err := openUserNS(plan, opt); err != nil {
		errs = append(errs, err)
	} else if fd >= 0 {
		unix.Close(fd)
	}
	for _, s := range plan.Steps {
		switch s.Op {
		case OpOpenExternal:
			check := s.Path
			if s.Deleted {
				check = filepath.Dir(s.Path) // made again there
			}
			if _, err := os.Stat(check); err != nil {
				errs = append(errs, fmt.Errorf("namespace %d, mount %d (%s): external source: %w", s.NS, s.Mount, plan.Handles[s.Handle].What, err))
			}
		case OpFillTmpfs:
			if opt.Images == nil || !opt.Images.Exists(images.TmpfsFile(s.Dev)) {
				errs = append(errs, fmt.Errorf("tmpfs content %s is missing", images.TmpfsFile(s.Dev)))
			}
		case OpPin:
			p := filepath.Join(opt.PinDir, PinName(s.NS))
			if _, err := os.Lstat(p); err == nil {
				errs = append(errs, fmt.Errorf("namespace %d: %s exists (release it first: mntv2 release --pin-dir %s)", s.NS, p, opt.PinDir))
			}
		}
	}
	return errors.Join(errs...)
}

// KernelSupport probes the mount API mntv2 uses. Each probe passes bad fds:
// the kernel checks flags first, so EBADF means the call and its flags
// exist, EINVAL an unknown flag, ENOSYS a missing syscall.
func KernelSupport() error { return kernelSupport("") }

// kernelSupport is KernelSupport; a probe whose name contains hide (if
// set) fails as on a kernel without its feature (Hooks.HideFeature).
func kernelSupport(hide string) error {
	probes := []struct {
		what string
		call func() error
	}{
		{"open_tree (5.2)", func() error {
			_, err := unix.OpenTree(-1, "", unix.OPEN_TREE_CLONE|unix.AT_EMPTY_PATH)
			return err
		}},
		{"move_mount with MOVE_MOUNT_SET_GROUP (5.15)", func() error {
			return unix.MoveMount(-1, "", -1, "", unix.MOVE_MOUNT_SET_GROUP|unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
		}},
		{"mount_setattr (5.12)", func() error {
			return unix.MountSetattr(-1, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY})
		}},
		{"fsopen (5.2)", func() error {
			_, err := unix.Fsmount(-1, 0, 0)
			return err
		}},
		{"openat2 (5.6)", func() error {
			_, err := unix.Openat2(-1, "x", &unix.OpenHow{})
			return err
		}},
	}
	var errs []error
	for _, p := range probes {
		if hide != "" && strings.Contains(p.what, hide) {
			errs = append(errs, fmt.Errorf("the kernel lacks %s: probe gave %v", p.what, unix.EINVAL))
			continue
		}
		if err := p.call(); !errors.Is(err, unix.EBADF) {
			errs = append(errs, fmt.Errorf("the kernel lacks %s: probe gave %v", p.what, err))
		}
	}
	return errors.Join(errs...)
}

package restore

import (
	"errors"
	"fmt"
	"strings"

	"github.com/mntv2/mntv2/images"
	"golang.org/x/sys/unix"
)

// newSuperblock makes a detached mount of a new filesystem instance.
func (a *applier) newSuperblock(s Step) error {
	if s.InNS {
		// Its options name paths in the namespace (an overlay's
		// layers): every tmpfs content must be in place.
		if err := a.waitFills(); err != nil {
			return err
		}
	}
	open := func() (int, error) { return unix.Fsopen(s.FSType, unix.FSOPEN_CLOEXEC) }
	if s.UserNS {
		o, err := a.opener(s.NS)
		if err != nil {
			return err
		}
		open = func() (int, error) { return o.Fsopen(s.FSType) }
	}
	fsfd, err := a.sysFd("fsopen", open)
	if err != nil {
		return fmt.Errorf("%s: %w", s.FSType, err)
	}
	defer unix.Close(fsfd)
	if s.Source != "" {
		if err := a.sys("fsconfig(source)", func() error { return unix.FsconfigSetString(fsfd, "source", s.Source) }); err != nil {
			return err
		}
	}
	for _, o := range strings.Split(s.Options, ",") {
		if o == "" {
			continue
		}
		key, val, hasVal := strings.Cut(o, "=")
		err := a.sys("fsconfig("+key+")", func() error {
			if hasVal {
				return unix.FsconfigSetString(fsfd, key, val)
			}
			return unix.FsconfigSetFlag(fsfd, key)
		})
		if err != nil {
			return fmt.Errorf("option %q: %w", o, err)
		}
	}
	if err := a.sys("fsconfig(FSCONFIG_CMD_CREATE)", func() error { return unix.FsconfigCreate(fsfd) }); err != nil {
		return err
	}
	fd, err := a.sysFd("fsmount", func() (int, error) { return unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0) })
	if err != nil {
		return err
	}
	a.fds[s.Handle] = fd
	return nil
}

// fillTmpfs starts extracting the tmpfs content (see fill).
func (a *applier) fillTmpfs(s Step) error {
	if a.opt.Images == nil {
		return errors.New("no images directory to read tmpfs content from")
	}
	name := images.TmpfsFile(s.Dev)
	f, err := a.opt.Images.OpenFile(name)
	if err != nil {
		return err
	}
	limit := a.opt.TmpfsLimit
	if l := tmpfsSizeLimit(a.sbOptions[s.Handle]); l > 0 {
		limit = l
	}
	fl := startFill(a.step, name, f, a.fds[s.Handle], limit, a.mountpointsIn(s.Handle), s.Owner, s.IDMap, s.AsRoot)
	a.fills = append(a.fills, fl)
	a.fillOf[s.Handle] = fl
	return nil
}

// indexHandles reads from the plan what the applier needs of its handles.
func (a *applier) indexHandles() {
	ix := indexHandles(a.plan)
	a.kind, a.sbOf, a.rootIn, a.sbOptions = ix.kind, ix.sbOf, ix.rootIn, ix.sbOptions
}

// mountpointsIn lists the mountpoints the extraction into superblock sb
// makes first (premadeMountpoints, from the kinds known at the first fill;
// one pass over the plan serves every superblock).
func (a *applier) mountpointsIn(sb Handle) []string {
	if a.premade == nil {
		a.premade = premadeMountpoints(a.plan, handleIndex{kind: a.kind, sbOf: a.sbOf, rootIn: a.rootIn})
	}
	return a.premade[sb]
}

// fillFor is the extraction into the superblock of a handle's mount.
func (a *applier) fillFor(h Handle) *fill {
	if sb := a.sbOf[h]; sb != NoHandle {
		return a.fillOf[sb]
	}
	return nil
}

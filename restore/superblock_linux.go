package restore

import (
	"errors"
	"fmt"
	"path"
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
	fl := startFill(a.step, name, f, a.fds[s.Handle], limit, a.mountpointsIn(s.Handle), s.Owner, s.IDMap, s.UserNS)
	a.fills = append(a.fills, fl)
	a.fillOf[s.Handle] = fl
	return nil
}

// indexHandles reads from the plan, for each handle, the new superblock it
// is a bind of (NoHandle if none), its root in it, and whether that root
// is surely a directory (the root of a new superblock, or a bind of the
// whole of one that is).
func (a *applier) indexHandles() {
	n := len(a.plan.Handles)
	a.kind, a.sbOf, a.rootIn, a.sbOptions = make([]kind, n), make([]Handle, n), make([]string, n), map[Handle]string{}
	for i := range a.sbOf {
		a.sbOf[i] = NoHandle
	}
	for _, s := range a.plan.Steps {
		switch s.Op {
		case OpNewSuperblock:
			a.sbOf[s.Handle], a.kind[s.Handle] = s.Handle, kindDir
			a.sbOptions[s.Handle] = s.Options
		case OpBind:
			a.sbOf[s.Handle], a.rootIn[s.Handle] = a.sbOf[s.From], path.Join(a.rootIn[s.From], s.Path)
			if s.Path == "" {
				a.kind[s.Handle] = a.kind[s.From]
			}
		}
	}
}

// fillFor is the extraction into the superblock of a handle's mount.
func (a *applier) fillFor(h Handle) *fill {
	if sb := a.sbOf[h]; sb != NoHandle {
		return a.fillOf[sb]
	}
	return nil
}

// mountpointsIn lists, in plan order, the one-component mountpoints of
// directory mounts attached on the root of superblock sb: the extraction
// makes them first (see fill). One pass over the plan serves every
// superblock.
func (a *applier) mountpointsIn(sb Handle) []string {
	if a.premade == nil {
		a.premade = map[Handle][]string{}
		seen := map[Handle]map[string]bool{}
		for _, s := range a.plan.Steps {
			if s.Op != OpAttach || s.Persistent || s.Path == "" || s.Path == "." || s.Path == ".." ||
				strings.Contains(s.Path, "/") || a.sbOf[s.Parent] == NoHandle || a.rootIn[s.Parent] != "" ||
				a.kind[s.Handle] != kindDir {
				continue
			}
			in := a.sbOf[s.Parent]
			if seen[in] == nil {
				seen[in] = map[string]bool{}
			}
			if !seen[in][s.Path] {
				seen[in][s.Path] = true
				a.premade[in] = append(a.premade[in], s.Path)
			}
		}
	}
	return a.premade[sb]
}

type kind int8

const (
	kindUnknown kind = iota
	kindDir
	kindOther
)

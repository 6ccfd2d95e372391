package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/plugin"
	"github.com/mntv2/mntv2/restore"
	"github.com/spf13/pflag"
)

// liveSource is a live or captured mount tree, named by one of --pid,
// --mountinfo or --pin-dir, as show and verify take it.
type liveSource struct {
	pid       int
	mountinfo string
	pinDir    string
	tree      int
	// images, when set, names the tree's namespaces by the image ids
	// (--tree): the task in each is found through pstree and ids images.
	images *images.Dir
}

func (s *liveSource) addFlags(fs *pflag.FlagSet, verb string) {
	fs.IntVar(&s.pid, "pid", 0, verb+" /proc/PID/mountinfo")
	fs.StringVar(&s.mountinfo, "mountinfo", "", verb+" a saved mountinfo file")
	fs.StringVar(&s.pinDir, "pin-dir", "", verb+" the namespaces pinned in DIR by mntv2 restore")
	fs.IntVar(&s.tree, "tree", 0, verb+" every mount namespace of the process tree rooted at PID (a container, a CRIU restore)")
}

// count is how many of the three were given.
func (s *liveSource) count() int {
	n := 0
	for _, set := range []bool{s.pid != 0, s.mountinfo != "", s.pinDir != "", s.tree != 0} {
		if set {
			n++
		}
	}
	return n
}

// read reads the tree. With --pin-dir it reads the namespaces ids (every
// pinned one when ids is nil); otherwise the one tree, as namespace mntns.
func (s *liveSource) read(ids []uint32, mntns uint32) ([]forest.NamespaceMounts, error) {
	switch {
	case s.pinDir != "":
		if ids == nil {
			pins, err := restore.Pins(s.pinDir)
			if err != nil {
				return nil, err
			}
			if len(pins) == 0 {
				return nil, fmt.Errorf("%s: no mntns-<ID> pins", s.pinDir)
			}
			for _, p := range pins {
				n, err := strconv.ParseUint(strings.TrimPrefix(p, "mntns-"), 10, 32)
				if err != nil {
					return nil, fmt.Errorf("%s: pin %s is not mntns-<ID>", s.pinDir, p)
				}
				ids = append(ids, uint32(n))
			}
		}
		paths := make(map[uint32]string, len(ids))
		for _, id := range ids {
			paths[id] = filepath.Join(s.pinDir, fmt.Sprintf("mntns-%d", id))
		}
		return forest.ReadNamespaceFiles(paths)
	case s.tree != 0 && s.images != nil:
		paths, err := plugin.RestoredNamespaces(s.images, s.tree)
		if err != nil {
			return nil, err
		}
		for id := range paths {
			if ids != nil && !slices.Contains(ids, id) {
				delete(paths, id)
			}
		}
		return forest.ReadNamespaceFiles(paths)
	case s.tree != 0:
		files, err := plugin.TreeNamespaceFiles(s.tree)
		if err != nil {
			return nil, err
		}
		paths := make(map[uint32]string, len(files))
		for i, p := range files {
			paths[uint32(i+1)] = p
		}
		return forest.ReadNamespaceFiles(paths)
	case s.pid != 0:
		nm, err := forest.ReadPID(s.pid, mntns)
		return []forest.NamespaceMounts{nm}, err
	case s.mountinfo != "":
		nm, err := forest.ReadMountinfoFile(s.mountinfo, mntns)
		return []forest.NamespaceMounts{nm}, err
	}
	return nil, errors.New("no tree named")
}

// build reads the tree and validates it; any failure is an input error.
func (s *liveSource) build(ids []uint32, mntns uint32) (*forest.Forest, error) {
	found, err := s.read(ids, mntns)
	if err != nil {
		return nil, inputError(err)
	}
	f, err := forest.Build(found)
	if err != nil {
		return nil, inputError(fmt.Errorf("the tree to check: %w", err))
	}
	return f, nil
}

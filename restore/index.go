package restore

import (
	"path"
	"strings"
)

// What the applier reads from the plan about its handles (computed from
// the plan alone: no kernel, any OS).

// handleIndex is, for each handle, the new superblock it is a bind of
// (NoHandle if none), its root in it, whether that root is surely a
// directory (the root of a new superblock, or a bind of the whole of one
// that is), and each new superblock's options (size= bounds a fill).
type handleIndex struct {
	kind      []kind
	sbOf      []Handle
	rootIn    []string
	sbOptions map[Handle]string
}

func indexHandles(plan *Plan) handleIndex {
	n := len(plan.Handles)
	ix := handleIndex{kind: make([]kind, n), sbOf: make([]Handle, n), rootIn: make([]string, n), sbOptions: map[Handle]string{}}
	for i := range ix.sbOf {
		ix.sbOf[i] = NoHandle
	}
	for _, s := range plan.Steps {
		switch s.Op {
		case OpNewSuperblock:
			ix.sbOf[s.Handle], ix.kind[s.Handle] = s.Handle, kindDir
			ix.sbOptions[s.Handle] = s.Options
		case OpBind:
			ix.sbOf[s.Handle], ix.rootIn[s.Handle] = ix.sbOf[s.From], path.Join(ix.rootIn[s.From], s.Path)
			if s.Path == "" {
				ix.kind[s.Handle] = ix.kind[s.From]
			}
		}
	}
	return ix
}

// premadeMountpoints lists per new superblock, in plan order, the
// one-component mountpoints of directory mounts (as kind knows them)
// attached on its root: the extraction makes them first (see fill).
func premadeMountpoints(plan *Plan, ix handleIndex) map[Handle][]string {
	premade := map[Handle][]string{}
	seen := map[Handle]map[string]bool{}
	for _, s := range plan.Steps {
		if s.Op != OpAttach || s.Persistent || s.Path == "" || s.Path == "." || s.Path == ".." ||
			strings.Contains(s.Path, "/") || ix.sbOf[s.Parent] == NoHandle || ix.rootIn[s.Parent] != "" ||
			ix.kind[s.Handle] != kindDir {
			continue
		}
		in := ix.sbOf[s.Parent]
		if seen[in] == nil {
			seen[in] = map[string]bool{}
		}
		if !seen[in][s.Path] {
			seen[in][s.Path] = true
			premade[in] = append(premade[in], s.Path)
		}
	}
	return premade
}

type kind int8

const (
	kindUnknown kind = iota
	kindDir
	kindOther
)

package restore

import (
	"path/filepath"
	"strings"
	"testing"
)

// The handle index of every fixture's plan: a bind is of its source's
// superblock, with its root below the source's; each premade mountpoint is
// the one-component path of a directory mount attached on the root of its
// superblock, once, in plan order.
func TestIndexHandlesFixtures(t *testing.T) {
	dirs, _ := filepath.Glob(filepath.Join(fixtures, "0*"))
	for _, dir := range dirs {
		name := filepath.Base(dir)
		t.Run(name, func(t *testing.T) {
			_, in := loadFixture(t, name)
			plan, err := NewPlan(in)
			if err != nil {
				t.Fatal(err)
			}
			ix := indexHandles(plan)
			type at struct {
				sb   Handle
				name string
			}
			var attached []at
			for _, s := range plan.Steps {
				switch s.Op {
				case OpNewSuperblock:
					if ix.sbOf[s.Handle] != s.Handle || ix.rootIn[s.Handle] != "" || ix.kind[s.Handle] != kindDir {
						t.Errorf("step %s: index %v %q %v", s, ix.sbOf[s.Handle], ix.rootIn[s.Handle], ix.kind[s.Handle])
					}
				case OpBind:
					if ix.sbOf[s.Handle] != ix.sbOf[s.From] || ix.rootIn[s.Handle] != filepath.Join(ix.rootIn[s.From], s.Path) {
						t.Errorf("step %s: bind of superblock %v at %q, its source's is %v at %q", s, ix.sbOf[s.Handle], ix.rootIn[s.Handle], ix.sbOf[s.From], ix.rootIn[s.From])
					}
				case OpAttach:
					one := s.Path != "" && s.Path != "." && s.Path != ".." && !strings.Contains(s.Path, "/")
					if sb := ix.sbOf[s.Parent]; sb != NoHandle && ix.rootIn[s.Parent] == "" && ix.kind[s.Handle] == kindDir && !s.Persistent && one {
						attached = append(attached, at{sb, s.Path})
					}
				}
			}
			seen := map[at]bool{}
			for sb, names := range premadeMountpoints(plan, ix) {
				for _, n := range names {
					if seen[at{sb, n}] {
						t.Errorf("superblock h%d: %s premade twice", sb, n)
					}
					seen[at{sb, n}] = true
				}
			}
			used := map[at]bool{}
			for _, a := range attached {
				if !seen[a] {
					t.Errorf("a directory mount attached at %s on the root of superblock h%d is not premade", a.name, a.sb)
				}
				used[a] = true
			}
			for a := range seen {
				if !used[a] {
					t.Errorf("premade %s on superblock h%d: no directory mount is attached there", a.name, a.sb)
				}
			}
		})
	}
}

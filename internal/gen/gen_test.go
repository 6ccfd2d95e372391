package gen

import (
	"testing"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/restore"
)

// Every shape gives a valid forest of about the size asked, which reads
// back from its images identical, and which the planner can restore.
func TestShapes(t *testing.T) {
	for _, shape := range Shapes {
		t.Run(shape, func(t *testing.T) {
			nss, err := Forest(shape, 1000)
			if err != nil {
				t.Fatal(err)
			}
			f, err := forest.Build(nss)
			if err != nil {
				t.Fatal(err)
			}
			if n := f.Len(); n < 950 || n > 1000 {
				t.Errorf("%d mounts, want about 1000", n)
			}
			if len(f.Groups()) == 0 {
				t.Error("no sharing groups")
			}
			dir := t.TempDir()
			d, err := images.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if err := WriteImages(d, nss); err != nil {
				t.Fatal(err)
			}
			back, err := forest.FromImages(d)
			if err != nil {
				t.Fatal(err)
			}
			if diffs := forest.Compare(f, back); len(diffs) > 0 {
				t.Fatalf("images differ from the forest: %v", diffs[0])
			}
			in, err := restore.LoadInput(d)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := restore.NewPlan(in); err != nil {
				t.Fatal(err)
			}
		})
	}
}

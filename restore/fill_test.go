package restore

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/testns"
)

// A tmpfs archive that fails while the rest of the restore runs beside its
// extraction (see fill): the restore fails naming the fill step, and
// nothing is left. Each archive of fixture 04 in turn is cut short, then
// (for the tmpfs that mounts are attached on) replaced by one that has
// files where the mountpoint directories go.
func TestApplyBadTmpfsContent(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	const fix = "04-content-ro-file-unbindable"
	_, in := loadFixture(t, fix)
	plan, err := NewPlan(in)
	if err != nil {
		t.Fatal(err)
	}
	a := &applier{plan: plan}
	a.indexHandles()
	type bad struct {
		name, file string
		data       func(orig []byte) []byte
	}
	var cases []bad
	var premadeSeen bool
	for _, s := range plan.Steps {
		if s.Op != OpFillTmpfs {
			continue
		}
		file := images.TmpfsFile(s.Dev)
		cases = append(cases, bad{file + " cut short", file, func(orig []byte) []byte { return orig[:len(orig)/2] }})
		if names := a.mountpointsIn(s.Handle); len(names) > 0 {
			premadeSeen = true
			cases = append(cases, bad{file + " with files at the mountpoints", file, func([]byte) []byte {
				var buf bytes.Buffer
				zw := gzip.NewWriter(&buf)
				tw := tar.NewWriter(zw)
				for _, n := range names {
					_ = tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644})
				}
				tw.Close()
				zw.Close()
				return buf.Bytes()
			}})
		}
	}
	if !premadeSeen || len(cases) < 3 {
		t.Fatalf("fixture %s: %d cases, premade mountpoints %v: the test needs tmpfs content with mounts on it", fix, len(cases), premadeSeen)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			file := c.file
			dir := testns.CopyDir(t, filepath.Join(fixtures, fix, "images"))
			orig, err := os.ReadFile(filepath.Join(dir, file))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, file), c.data(orig), 0o644); err != nil {
				t.Fatal(err)
			}
			d, err := images.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			root, pins := scratch(t)
			before := snapshot(t, root, pins)
			_, err = Apply(plan, Options{Root: root, PinDir: pins, Images: d})
			var se *StepError
			if !errors.As(err, &se) || se.Step.Op != OpFillTmpfs || !bytes.Contains([]byte(err.Error()), []byte(file)) {
				t.Fatalf("got %v, want a StepError of the fill step naming %s", err, file)
			}
			if d := before.diff(settle(t, root, pins, before)); d != "" {
				t.Fatalf("after %v:\n%s", err, d)
			}
			t.Log(err)
		})
	}
}

package restore

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/fuzzseed"
)

// FuzzPlan: for every valid forest the planner either says which mounts it
// cannot restore or gives a plan the abstract kernel model accepts and that
// builds exactly the forest; the live plan and its helpers are sound too.
func FuzzPlan(f *testing.F) {
	fuzzseed.Files(f, filepath.Join(fixtures, "*", "images", "mountpoints-*.img"))
	lim := images.Limits{MaxRecord: 1 << 16, MaxFile: 1 << 20}
	f.Fuzz(func(t *testing.T, data []byte) {
		ms, err := forest.ParseMountpoints(data, "mountpoints-1.img", lim)
		if err != nil || len(ms) > 64 {
			return
		}
		fo, err := forest.Build([]forest.NamespaceMounts{{ID: 1, Mounts: ms}})
		if err != nil {
			return
		}
		in := Input{Forest: fo, Auto: true, TmpfsContent: map[uint32]bool{}}
		plan, err := NewPlan(in)
		var unsupported *UnsupportedError
		if errors.As(err, &unsupported) {
			if len(unsupported.Mounts) == 0 {
				t.Fatal("an UnsupportedError names no mount")
			}
		} else if err != nil {
			t.Fatalf("planning failed without naming the mounts: %v", err)
		} else {
			m := runModel(t, plan)
			checkResult(t, fo, plan, m)
		}
		if _, err := LiveHelpers(fo); err != nil && !errors.As(err, &unsupported) {
			t.Fatalf("LiveHelpers: %v", err)
		}
		live, err := NewLivePlan(Input{Forest: fo, Live: &LiveInput{}, HostLenient: true})
		if err == nil {
			checkLivePlan(t, fo, live)
		} else if !errors.As(err, &unsupported) {
			t.Fatalf("live planning failed without naming the mounts: %v", err)
		}
	})
}

// FuzzTmpfs: any archive is extracted inside the root or refused; nothing
// outside changes and the data written stays under the limit.
func FuzzTmpfs(f *testing.F) {
	fuzzseed.Files(f, filepath.Join(fixtures, "*", "images", "tmpfs-dev-*.tar.gz.img"))
	// Hostile seeds: a link out, a symlink then a write through it.
	for _, entries := range [][]tar.Header{
		{{Name: "up", Typeflag: tar.TypeSymlink, Linkname: "../outside"}, {Name: "up/canary", Typeflag: tar.TypeReg, Size: 1}},
		{{Name: "h", Typeflag: tar.TypeLink, Linkname: "../outside/canary"}},
		{{Name: "../x", Typeflag: tar.TypeReg}},
	} {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		tw := tar.NewWriter(zw)
		for _, h := range entries {
			h := h
			h.Mode = 0o644
			_ = tw.WriteHeader(&h)
			if h.Size > 0 {
				_, _ = tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
			}
		}
		tw.Close()
		zw.Close()
		f.Add(buf.Bytes())
	}
	const limit = 1 << 16
	f.Fuzz(func(t *testing.T, data []byte) {
		root, outside, _ := extractInto(t, data, limit)
		if got := listTree(t, outside); got != ". drwxr-xr-x\ncanary -rw-r--r--" {
			t.Fatalf("outside changed:\n%s", got)
		}
		if b, err := os.ReadFile(filepath.Join(outside, "canary")); err != nil || string(b) != "canary" {
			t.Fatalf("canary changed: %q %v", b, err)
		}
		var total int64
		_ = filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				total += fi.Size()
			}
			return nil
		})
		if total > limit {
			t.Fatalf("%d bytes extracted, limit %d", total, limit)
		}
	})
}

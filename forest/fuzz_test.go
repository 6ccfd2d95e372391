package forest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/fuzzseed"
)

// FuzzBuildFromImage: any mountpoints image gives a valid forest or an
// error; a valid forest is identical to itself and survives the trip
// through image entries.
func FuzzBuildFromImage(f *testing.F) {
	fuzzseed.Files(f, filepath.Join(fixtures, "*", "images", "mountpoints-*.img"))
	lim := images.Limits{MaxRecord: 1 << 16, MaxFile: 1 << 20}
	f.Fuzz(func(t *testing.T, data []byte) {
		ms, err := ParseMountpoints(data, "mountpoints-1.img", lim)
		if err != nil {
			return
		}
		fo, err := Build([]NamespaceMounts{{ID: 1, Mounts: ms}})
		if err != nil {
			if !strings.Contains(err.Error(), "mount namespace 1") {
				t.Fatalf("error does not name the namespace: %v", err)
			}
			return
		}
		if d := Compare(fo, fo); len(d) != 0 {
			t.Fatalf("forest differs from itself: %v", d[0])
		}
		back := make([]Mount, 0, len(ms))
		for _, m := range fo.Namespaces[0].Mounts {
			e := ToImageMount(m)
			back = append(back, FromImageMount(&e))
		}
		fo2, err := Build([]NamespaceMounts{{ID: 1, Mounts: back}})
		if err != nil {
			t.Fatalf("forest rebuilt from its own entries is invalid: %v", err)
		}
		if d := Compare(fo, fo2); len(d) != 0 {
			t.Fatalf("image round trip changed the forest: %v", d[0])
		}
		var sb strings.Builder
		if err := WriteText(&sb, fo); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzMountinfo: any mountinfo text parses or fails cleanly, and a parsed
// valid forest is identical to itself.
func FuzzMountinfo(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(fixtures, "*", "mountinfo", "*.mountinfo"))
	for _, file := range files {
		b, _ := os.ReadFile(file)
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, text string) {
		nm, err := FromMountinfo(strings.NewReader(text), 1)
		if err != nil {
			return
		}
		fo, err := Build([]NamespaceMounts{nm})
		if err != nil {
			return
		}
		if d := Compare(fo, fo); len(d) != 0 {
			t.Fatalf("forest differs from itself: %v", d[0])
		}
	})
}

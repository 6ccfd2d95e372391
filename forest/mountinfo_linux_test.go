package forest

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
)

// The model's own mountinfo parser reads what moby/sys/mountinfo reads:
// this process's table and every fixture's.
func TestMountinfoParserAgreesWithMoby(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(fixtures, "*", "mountinfo", "*.mountinfo"))
	files = append(files, "/proc/self/mountinfo")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		ours, err := parseMountinfo(strings.NewReader(string(data)))
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		theirs, err := mountinfo.GetMountsFromReader(strings.NewReader(string(data)), nil)
		if err != nil {
			t.Fatalf("%s: moby: %v", file, err)
		}
		if len(ours) != len(theirs) || len(ours) == 0 {
			t.Fatalf("%s: %d mounts, moby %d", file, len(ours), len(theirs))
		}
		for i, m := range theirs {
			want := info{ID: m.ID, Parent: m.Parent, Major: m.Major, Minor: m.Minor, Root: m.Root, Mountpoint: m.Mountpoint,
				Options: m.Options, Optional: m.Optional, FSType: m.FSType, Source: m.Source, VFSOptions: m.VFSOptions}
			if !reflect.DeepEqual(*ours[i], want) {
				t.Errorf("%s line %d:\n ours %+v\nmoby %+v", file, i+1, *ours[i], want)
			}
		}
	}
}

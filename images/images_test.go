package images

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const fixtures = "../testdata/criu-4.2"

func fixtureDirs(t testing.TB) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(fixtures, "*", "images"))
	if err != nil || len(dirs) != 7 {
		t.Fatalf("want 7 fixture image dirs, got %d (%v)", len(dirs), err)
	}
	return dirs
}

func typeOf(name string) (Type, bool) {
	switch {
	case name == "inventory.img":
		return Inventory, true
	case name == "pstree.img":
		return Pstree, true
	case strings.HasPrefix(name, "ids-"):
		return IDs, true
	case strings.HasPrefix(name, "fs-"):
		return FS, true
	case strings.HasPrefix(name, "mountpoints-"):
		return Mountpoints, true
	}
	return Type{}, false
}

func TestRoundTripFixtures(t *testing.T) {
	n := 0
	for _, dir := range fixtureDirs(t) {
		d, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		names, err := d.Names()
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range names {
			typ, ok := typeOf(name)
			if !ok {
				continue
			}
			raw, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			img, err := d.ReadImage(name, typ)
			if err != nil {
				t.Fatalf("%s/%s: %v", dir, name, err)
			}
			if got := img.Bytes(); !bytes.Equal(got, raw) {
				t.Errorf("%s/%s: written back differs (%d vs %d bytes)", dir, name, len(got), len(raw))
			}
			// Decoding then re-encoding the entries must give the same bytes as well.
			if typ == Mountpoints {
				ms, err := img.Mounts()
				if err != nil {
					t.Fatal(err)
				}
				re, err := EncodeMounts(0, ms)
				if err != nil {
					t.Fatal(err)
				}
				re.File = name
				if !bytes.Equal(re.Bytes(), raw) {
					t.Errorf("%s/%s: re-encoded entries differ", dir, name)
				}
			}
			n++
		}
		d.Close()
	}
	if n < 7*5 {
		t.Fatalf("round-tripped only %d images", n)
	}
}

func TestFixtureContents(t *testing.T) {
	d, err := Open(filepath.Join(fixtures, "06-nested-mntns-peers", "images"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	inv, err := d.Inventory()
	if err != nil {
		t.Fatal(err)
	}
	// root_ids are the namespaces of the dumping CRIU (the host), not of the tree.
	if !inv.HasRootIDs || inv.RootIDs.MntNS == 0 || inv.ImgVersion != imgVersionV11 {
		t.Fatalf("inventory = %+v", inv)
	}
	ns, err := d.MountNamespaces()
	if err != nil {
		t.Fatal(err)
	}
	if len(ns) != 2 || ns[0] != 10 || ns[1] != 11 {
		t.Fatalf("namespaces = %v, want [10 11]", ns)
	}
	tasks, err := d.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint32]bool{}
	for _, task := range tasks {
		ids, err := d.TaskIDs(task.Pid)
		if err != nil {
			t.Fatal(err)
		}
		seen[ids.MntNS] = true
	}
	if !seen[10] || !seen[11] {
		t.Fatalf("tasks' mount namespaces = %v, want 10 and 11", seen)
	}
	ms, err := d.Mounts(10)
	if err != nil {
		t.Fatal(err)
	}
	var shared *Mount
	for i := range ms {
		if ms[i].Mountpoint == "/tmp/shared" {
			shared = &ms[i]
		}
	}
	if shared == nil || shared.SharedID == 0 || shared.Flags&msShared == 0 {
		t.Fatalf("/tmp/shared not found shared: %+v", shared)
	}
}

func TestHostileImages(t *testing.T) {
	hdr := []byte{0x19, 0x43, 0x56, 0x54, 0x28, 0x39, 0x56, 0x55}
	cases := []struct {
		name string
		data []byte
		want error
		text string
	}{
		{"empty", nil, ErrTruncated, "header"},
		{"wrong common magic", []byte{1, 2, 3, 4, 0x28, 0x39, 0x56, 0x55}, ErrBadMagic, "wrong magic"},
		{"wrong type magic", append(hdr[:4:4], 0x30, 0x30, 0x27, 0x50), ErrBadMagic, "mountpoints image"},
		{"truncated header", append(append([]byte{}, hdr...), 5, 0), ErrTruncated, "offset 8"},
		{"truncated record", append(append([]byte{}, hdr...), 5, 0, 0, 0, 1, 2), ErrTruncated, "offset 8"},
		{"2^31 record", append(append([]byte{}, hdr...), 0, 0, 0, 0x80), ErrTooLarge, "2147483648"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(c.data, "mountpoints-10.img", Mountpoints, DefaultLimits)
			var fe *FormatError
			if !errors.As(err, &fe) || !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want FormatError wrapping %v", err, c.want)
			}
			if !strings.Contains(err.Error(), "mountpoints-10.img") || !strings.Contains(err.Error(), c.text) {
				t.Fatalf("error %q does not name the file and %q", err, c.text)
			}
		})
	}
	t.Run("garbage protobuf", func(t *testing.T) {
		data := append(append([]byte{}, hdr...), 3, 0, 0, 0, 0xff, 0xff, 0xff)
		img, err := Parse(data, "mountpoints-10.img", Mountpoints, DefaultLimits)
		if err != nil {
			t.Fatal(err)
		}
		_, err = img.Mounts()
		if !errors.Is(err, ErrBadRecord) || !strings.Contains(err.Error(), "mountpoints-10.img") {
			t.Fatalf("err = %v, want ErrBadRecord naming the file", err)
		}
	})
	t.Run("file cap", func(t *testing.T) {
		_, err := Decode(bytes.NewReader(make([]byte, 100)), "x.img", Mountpoints, Limits{MaxRecord: 10, MaxFile: 50})
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("err = %v, want ErrTooLarge", err)
		}
	})
}

func TestStripSharing(t *testing.T) {
	d, err := Open(filepath.Join(fixtures, "07-propagation-storm", "images"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	img, err := d.ReadImage(MountpointsFile(10), Mountpoints)
	if err != nil {
		t.Fatal(err)
	}
	stripped, changed, err := img.StripSharing()
	if err != nil {
		t.Fatal(err)
	}
	ms, _ := stripped.Mounts()
	orig, _ := img.Mounts()
	if changed != 20 {
		t.Errorf("changed %d records, want the 20 with sharing", changed)
	}
	for i, m := range ms {
		if m.SharedID != 0 || m.MasterID != 0 || m.Flags&(msShared|msSlave) != 0 {
			t.Errorf("mount %d still shares: %+v", m.MntID, m)
		}
		o := orig[i]
		o.SharedID, o.MasterID, o.Flags = 0, 0, o.Flags&^(msShared|msSlave)
		if o != m {
			t.Errorf("mount %d changed beyond sharing:\n%+v\n%+v", m.MntID, o, m)
		}
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.WriteFile("a.img", []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteFile("a.img", []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "a.img"))
	names, _ := d.Names()
	if string(got) != "two" || len(names) != 1 {
		t.Fatalf("content %q, entries %v", got, names)
	}
	if err := d.WriteFile("../escape", nil, 0o600); err == nil {
		t.Fatal("a name with a slash was accepted")
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "link.img")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ReadImage("link.img", Mountpoints); err == nil {
		t.Fatal("read through a symlink")
	}
}

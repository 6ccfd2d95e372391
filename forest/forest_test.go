package forest

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/mntv2/mntv2/images"
)

const fixtures = "../testdata/criu-4.2"

func loadImages(t testing.TB, fixture string) *Forest {
	t.Helper()
	d, err := images.Open(filepath.Join(fixtures, fixture, "images"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	f, err := FromImages(d)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func mountinfoForest(t testing.TB, text string, nsID uint32) (*Forest, error) {
	t.Helper()
	nm, err := FromMountinfo(strings.NewReader(text), nsID)
	if err != nil {
		return nil, err
	}
	return Build([]NamespaceMounts{nm})
}

func readMountinfo(t testing.TB, fixture string, nsID uint32) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtures, fixture, "mountinfo", "mntns-"+itoa(nsID)+".mountinfo"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

var mountinfoName = regexp.MustCompile(`mntns-([0-9]+)\.mountinfo$`)

// TestFixturesImagesMatchCapturedMountinfo: the images and the mountinfo
// captured before the dump describe the same trees.
func TestFixturesImagesMatchCapturedMountinfo(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(fixtures, "*", "mountinfo", "*.mountinfo"))
	if len(files) != 8 {
		t.Fatalf("want 8 captured mountinfo files, got %d", len(files))
	}
	for _, file := range files {
		fixture := filepath.Base(filepath.Dir(filepath.Dir(file)))
		n, _ := strconv.ParseUint(mountinfoName.FindStringSubmatch(file)[1], 10, 32)
		id := uint32(n)
		t.Run(fixture+"/"+filepath.Base(file), func(t *testing.T) {
			exp := loadImages(t, fixture).Only(id)
			found, err := mountinfoForest(t, readMountinfo(t, fixture, id), id)
			if err != nil {
				t.Fatal(err)
			}
			if diffs := Compare(exp, found); len(diffs) != 0 {
				for _, d := range diffs {
					t.Error(d)
				}
			}
			if exp.Len() != found.Len() {
				t.Errorf("%d mounts in images, %d captured", exp.Len(), found.Len())
			}
		})
	}
}

// mutate applies fn to the fields of the mountinfo line whose mount id is id.
func mutate(t *testing.T, text, id string, fn func(fields []string) []string) string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(text), "\n")
	hit := false
	var out []string
	for _, l := range lines {
		f := strings.Fields(l)
		if f[0] == id {
			hit = true
			f = fn(f)
			if f == nil {
				continue
			}
		}
		out = append(out, strings.Join(f, " "))
	}
	if !hit {
		t.Fatalf("no mount %s", id)
	}
	return strings.Join(out, "\n") + "\n"
}

func TestCompareCatchesMutations(t *testing.T) {
	cases := []struct {
		name, fixture string
		mutate        func(t *testing.T, s string) string
		where, what   string
	}{
		{"shared tag removed", "07-propagation-storm", func(t *testing.T, s string) string {
			return mutate(t, s, "44", func(f []string) []string { return remove(f, "shared:1") })
		}, "/tmp/q", "peer group"},
		{"masters swapped", "07-propagation-storm", func(t *testing.T, s string) string {
			// /tmp/s2 is a slave of /tmp/r's group, /tmp/r/one of /tmp/p/one's.
			s = mutate(t, s, "46", func(f []string) []string { return replace(f, "master:2", "master:3") })
			return mutate(t, s, "49", func(f []string) []string { return replace(f, "master:3", "master:2") })
		}, "/tmp/s2", "master"},
		{"root path changed", "04-content-ro-file-unbindable", func(t *testing.T, s string) string {
			return mutate(t, s, "44", func(f []string) []string { f[3] = "/dir/deep"; return f })
		}, "/tmp/sub", "root path"},
		{"mount dropped", "05-overmounts", func(t *testing.T, s string) string {
			return mutate(t, s, "49", func(f []string) []string { return nil })
		}, "/tmp/h/x", "missing mount"},
		{"stacked mounts reordered", "05-overmounts", func(t *testing.T, s string) string {
			// s1(43) <- s2(44) <- s3(45) becomes s2 <- s1 <- s3.
			s = mutate(t, s, "44", func(f []string) []string { f[1] = "73"; return f })
			s = mutate(t, s, "43", func(f []string) []string { f[1] = "44"; return f })
			return mutate(t, s, "45", func(f []string) []string { f[1] = "43"; return f })
		}, "/tmp/s", "source"},
		{"superblock shared", "05-overmounts", func(t *testing.T, s string) string {
			return mutate(t, s, "50", func(f []string) []string { f[2] = "0:48"; return f })
		}, "/tmp/h", "superblock"},
		{"flags changed", "04-content-ro-file-unbindable", func(t *testing.T, s string) string {
			return mutate(t, s, "45", func(f []string) []string { f[5] = "rw,relatime"; return f })
		}, "/tmp/ro", "flags"},
		{"unbindable removed", "04-content-ro-file-unbindable", func(t *testing.T, s string) string {
			return mutate(t, s, "47", func(f []string) []string { return remove(f, "unbindable") })
		}, "/tmp/ub", "unbindable"},
		{"slave made private", "03-slaves-of-subdirs", func(t *testing.T, s string) string {
			return mutate(t, s, "45", func(f []string) []string { return remove(f, "master:1") })
		}, "/tmp/v2", "master"},
		{"peers split", "02-peers-no-common-root", func(t *testing.T, s string) string {
			return mutate(t, s, "46", func(f []string) []string { return replace(f, "shared:1", "shared:9") })
		}, "/tmp/p2", "peer group"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			exp := loadImages(t, c.fixture).Only(10)
			found, err := mountinfoForest(t, c.mutate(t, readMountinfo(t, c.fixture, 10)), 10)
			if err != nil {
				t.Fatal(err)
			}
			diffs := Compare(exp, found)
			if len(diffs) == 0 {
				t.Fatal("no difference found")
			}
			ok := false
			for _, d := range diffs {
				t.Log(d)
				if strings.HasPrefix(d.Mountpoint, c.where) && d.What == c.what {
					ok = true
				}
				if !strings.Contains(d.String(), d.Mountpoint) || !strings.Contains(d.String(), "expected") {
					t.Errorf("message does not name the mount: %s", d)
				}
			}
			if !ok {
				t.Errorf("no %q difference at %s; got:", c.what, c.where)
				for _, d := range diffs {
					t.Log(d)
				}
			}
		})
	}
}

func remove(f []string, tag string) []string {
	var out []string
	for _, x := range f {
		if x != tag {
			out = append(out, x)
		}
	}
	return out
}

func replace(f []string, from, to string) []string {
	for i := range f {
		if f[i] == from {
			f[i] = to
		}
	}
	return f
}

func TestBuildRejectsBrokenForests(t *testing.T) {
	base := func() []Mount {
		return []Mount{
			{ID: 1, ParentID: 0, Mountpoint: "/", Root: "/", FSType: "tmpfs"},
			{ID: 2, ParentID: 1, Mountpoint: "/a", Root: "/", FSType: "tmpfs"},
			{ID: 3, ParentID: 2, Mountpoint: "/a/b", Root: "/", FSType: "tmpfs"},
		}
	}
	cases := []struct {
		name string
		edit func(ms []Mount) []Mount
		want Problem
	}{
		{"duplicate id", func(ms []Mount) []Mount { ms[2].ID = 2; return ms }, DuplicateID},
		{"missing parent", func(ms []Mount) []Mount { ms[2].ParentID = 99; return ms }, MissingParent},
		{"parent cycle", func(ms []Mount) []Mount {
			return append(ms, Mount{ID: 4, ParentID: 5, Mountpoint: "/x", Root: "/", FSType: "tmpfs"},
				Mount{ID: 5, ParentID: 4, Mountpoint: "/x", Root: "/", FSType: "tmpfs"})
		}, ParentCycle},
		{"two roots", func(ms []Mount) []Mount {
			return append(ms, Mount{ID: 9, ParentID: 0, Mountpoint: "/", Root: "/", FSType: "tmpfs"})
		}, RootCount},
		{"no root", func(ms []Mount) []Mount { ms[0].ParentID = 3; return ms }, RootCount},
		{"master cycle", func(ms []Mount) []Mount {
			ms[1].PeerGroup, ms[1].Master = 1, 2
			ms[2].PeerGroup, ms[2].Master = 2, 1
			return ms
		}, MasterCycle},
		{"outside parent", func(ms []Mount) []Mount { ms[2].Mountpoint = "/c"; return ms }, OutsideParent},
		{"dotdot", func(ms []Mount) []Mount { ms[2].Mountpoint = "/a/../etc"; return ms }, BadPath},
		{"NUL", func(ms []Mount) []Mount { ms[2].Root = "/x\x00y"; return ms }, BadPath},
		{"relative", func(ms []Mount) []Mount { ms[2].Root = "x"; return ms }, BadPath},
		{"same mountpoint twice", func(ms []Mount) []Mount {
			return append(ms, Mount{ID: 4, ParentID: 1, Mountpoint: "/a", Root: "/", FSType: "tmpfs"})
		}, SameMountpoint},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Build([]NamespaceMounts{{ID: 7, Mounts: c.edit(base())}})
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("err = %v, want a ValidationError", err)
			}
			found := false
			for _, e := range flatten(err) {
				if errors.As(e, &ve) && ve.Problem == c.want {
					found = true
					if !strings.Contains(e.Error(), "mount namespace 7") {
						t.Errorf("error does not name the namespace: %v", e)
					}
				}
			}
			if !found {
				t.Fatalf("err = %v, want problem %q", err, c.want)
			}
		})
	}
	if _, err := Build([]NamespaceMounts{{ID: 7, Mounts: base()}}); err != nil {
		t.Fatalf("valid forest rejected: %v", err)
	}
}

func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func TestDeepChain(t *testing.T) {
	const n = 100000
	ms := make([]Mount, n)
	for i := range ms {
		ms[i] = Mount{ID: uint32(i + 1), ParentID: uint32(i), Mountpoint: "/", Root: "/", FSType: "tmpfs"}
	}
	f, err := Build([]NamespaceMounts{{ID: 1, Mounts: ms}})
	if err != nil {
		t.Fatal(err)
	}
	if d := Compare(f, f); len(d) != 0 {
		t.Fatalf("a forest differs from itself: %v", d[0])
	}
	if got := f.Namespaces[0].Mount(n).StackLevel(); got != n-1 {
		t.Fatalf("stack level %d", got)
	}
}

func TestFlagsRoundTrip(t *testing.T) {
	for _, s := range []string{"rw,strictatime", "ro,nosuid,nodev,noexec,noatime", "rw,relatime", "ro,nosymfollow,nodiratime,strictatime"} {
		if got := ParseFlags(s).String(); got != s {
			t.Errorf("ParseFlags(%q).String() = %q", s, got)
		}
	}
}

// mountinfo never prints strictatime, and CRIU writes MS_STRICTATIME when
// it sees neither relatime nor noatime: both read as the same flags.
func TestAtimeModeFromMountinfo(t *testing.T) {
	for _, c := range []struct {
		mountinfo string
		image     Flags
	}{
		{"rw", StrictAtime},
		{"ro,nosuid", ReadOnly | NoSuid | StrictAtime},
		{"rw,relatime", Relatime},
		{"rw,noatime", NoAtime},
		{"rw,nodiratime", NoDiratime | StrictAtime},
	} {
		if got, want := ParseFlags(c.mountinfo), c.image.AtimeMode(); got != want {
			t.Errorf("ParseFlags(%q) = %s, want %s (the image's flags)", c.mountinfo, got, want)
		}
	}
	// An image with no atime bit at all (an older writer) means the same.
	if got := Flags(NoSuid).AtimeMode(); got != NoSuid|StrictAtime {
		t.Errorf("AtimeMode of nosuid = %s", got)
	}
	if got := (NoAtime | Relatime).AtimeMode(); got != NoAtime {
		t.Errorf("noatime,relatime = %s, want noatime", got)
	}
}

// Regression (FuzzPlan): a mount id 0 is refused, naming the problem.
func TestZeroMountID(t *testing.T) {
	_, err := Build([]NamespaceMounts{{ID: 1, Mounts: []Mount{
		{ID: 0, ParentID: 0, Mountpoint: "/", Root: "/", FSType: "tmpfs"},
	}}})
	if err == nil || !strings.Contains(err.Error(), "mount id 0") {
		t.Fatalf("got %v, want a mount id 0 error", err)
	}
}

// Regression (FuzzPlan): a mount id 0 that others name as parent does not
// crash the cycle search.
func TestZeroMountIDAsParent(t *testing.T) {
	_, err := Build([]NamespaceMounts{{ID: 1, Mounts: []Mount{
		{ID: 1, ParentID: 1, Mountpoint: "/", Root: "/", FSType: "tmpfs"},
		{ID: 0, ParentID: 2, Mountpoint: "/a", Root: "/", FSType: "tmpfs"},
		{ID: 2, ParentID: 0, Mountpoint: "/a/b", Root: "/", FSType: "tmpfs"},
	}}})
	if err == nil || !strings.Contains(err.Error(), "mount id 0") {
		t.Fatalf("got %v, want a mount id 0 error", err)
	}
}

package restore

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mntv2/mntv2/forest"
)

// TestPlanFixtures runs the plan of every fixture in the model: it is valid
// step by step and builds the images' trees, groups and masters. Only
// fixture 02 needs a helper (peers /x and /y with no common mount).
func TestPlanFixtures(t *testing.T) {
	dirs, _ := filepath.Glob(filepath.Join(fixtures, "0*"))
	if len(dirs) != 7 {
		t.Fatalf("want 7 fixtures, got %d", len(dirs))
	}
	for _, dir := range dirs {
		name := filepath.Base(dir)
		t.Run(name, func(t *testing.T) {
			_, in := loadFixture(t, name)
			plan := planAndCheck(t, in)
			want := 0
			if strings.HasPrefix(name, "02-") {
				want = 1
			}
			if plan.Helpers != want {
				t.Errorf("%d helpers, want %d", plan.Helpers, want)
			}
		})
	}
}

func TestPlanHelpers(t *testing.T) {
	cases := []struct {
		name    string
		mounts  []string
		helpers int
		why     string // in the helper's bind step
	}{
		{"peers with no common mount", []string{
			"10 1 /a /x 2 1 0",
			"11 1 /b /y 2 1 0",
		}, 1, "group 1 has a root containing /"},
		{"slaves of sibling subdirectories, master on another subdirectory", []string{
			"10 1 /m /sub 2 1 0",
			"11 1 /a /a 2 0 1",
			"12 1 /b /b 2 0 1",
		}, 1, "group 1 has a root containing /"},
		{"slave group wider than its master", []string{
			"10 1 /m /d/m 2 1 0",
			"11 1 /s /d 2 2 1",
		}, 1, "group 1 has a root containing /d"},
		{"a member contains everyone: no helper", []string{
			"10 1 /m / 2 1 0",
			"11 1 /a /a 2 0 1",
			"12 1 /b /b/c 2 2 1",
			"13 1 /c /b 2 2 1",
		}, 0, ""},
		{"slave group numbered before its master", []string{
			"10 1 /m / 2 2 0",
			"11 1 /s /s 2 1 2",
		}, 0, ""},
		{"chain of three levels", []string{
			"10 1 /g1 /p/q 2 1 0",
			"11 1 /g2 /p/r 2 2 1",
			"12 1 /g3 /z 2 3 2",
		}, 2, "group 1 has a root containing /"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := forestOf(t, c.mounts...)
			plan := planAndCheck(t, Input{Forest: f})
			if plan.Helpers != c.helpers {
				t.Fatalf("%d helpers, want %d:\n%s", plan.Helpers, c.helpers, planText(plan))
			}
			if c.why != "" && !strings.Contains(planText(plan), c.why) {
				t.Errorf("no helper step says %q:\n%s", c.why, planText(plan))
			}
		})
	}
}

// Members of a group cloned from a shared representative need no set-group;
// the model checks they end up peers and that nothing is attached under a
// shared mount.
func TestPlanBornPeers(t *testing.T) {
	cases := []struct {
		name            string
		mounts          []string
		setGroups, born int
	}{
		{"leaf peers, one containing the others", []string{
			"10 1 /a /d 2 1 0",
			"11 1 /b /d/x 2 1 0",
			"12 1 /c /d/y 2 1 0",
		}, 0, 2},
		{"leaf peers with a slave", []string{
			"10 1 /a / 2 1 0",
			"11 1 /b / 2 1 0",
			"12 1 /s /s 2 0 1",
		}, 1, 1},
		{"a member with a child: copied after assembly", []string{
			"10 1 /a / 2 1 0",
			"11 1 /b / 2 1 0",
			"12 10 /a/c / 3 0 0",
		}, 1, 0},
		{"peers with a master: copied after assembly", []string{
			"10 1 /m / 2 1 0",
			"11 1 /a / 2 2 1",
			"12 1 /b / 2 2 1",
		}, 2, 0},
		{"no member contains the others: a helper", []string{
			"10 1 /a /x 2 1 0",
			"11 1 /b /y 2 1 0",
		}, 2, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			plan := planAndCheck(t, Input{Forest: forestOf(t, c.mounts...)})
			setGroups, born := 0, 0
			for _, s := range plan.Steps {
				switch {
				case s.Op == OpSetGroup:
					setGroups++
				case s.Op == OpBind && strings.Contains(s.Why, "from birth"):
					born++
				}
			}
			if setGroups != c.setGroups || born != c.born {
				t.Errorf("%d set-group steps and %d members born peers, want %d and %d:\n%s",
					setGroups, born, c.setGroups, c.born, planText(plan))
			}
		})
	}
}

// TestPlanUnsupported: every mount that cannot be restored is listed at
// once, before any step exists.
func TestPlanUnsupported(t *testing.T) {
	nm := forest.NamespaceMounts{ID: 7, Mounts: []forest.Mount{
		{ID: 1, ParentID: 1, Mountpoint: "/", Root: "/", FSType: "tmpfs", Dev: 1},
		{ID: 2, ParentID: 1, Mountpoint: "/data", Root: "/", FSType: "ext4", Dev: 2},
		{ID: 3, ParentID: 1, Mountpoint: "/nfs", Root: "/", FSType: "nfs", Dev: 3},
		{ID: 4, ParentID: 1, Mountpoint: "/host", Root: "/", External: "vol1", Dev: 4},
		{ID: 5, ParentID: 1, Mountpoint: "/gone", Root: "/x", FSType: "tmpfs", Dev: 5, Deleted: true},
		{ID: 6, ParentID: 1, Mountpoint: "/ok", Root: "/", FSType: "tmpfs", Dev: 6},
	}}
	f, err := forest.Build([]forest.NamespaceMounts{nm})
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewPlan(Input{Forest: f})
	var ue *UnsupportedError
	if !errors.As(err, &ue) {
		t.Fatalf("got %v, want *UnsupportedError", err)
	}
	want := []string{
		`namespace 7, mount 2 (/data): filesystem "ext4", which CRIU has no type for (fstype UNSUPPORTED) on superblock 0:2: CRIU makes such a mount only as a bind of the restore root or of an external mount`,
		`namespace 7, mount 3 (/nfs): filesystem "nfs", which CRIU has no type for`,
		`namespace 7, mount 4 (/host): external mount "vol1" has no --ext-mount-map entry`,
	}
	if len(ue.Mounts) != len(want) {
		t.Fatalf("%d mounts listed, want %d: %v", len(ue.Mounts), len(want), ue.Mounts)
	}
	for i, w := range want {
		if !strings.HasPrefix(ue.Mounts[i], w) {
			t.Errorf("listed %q, want %q", ue.Mounts[i], w)
		}
	}
	// With the map, the external mount plans.
	if _, err := NewPlan(Input{Forest: f.Only(7), External: map[string]string{"vol1": "/srv"}}); err == nil || strings.Contains(err.Error(), "vol1") {
		t.Errorf("with --ext-mount-map vol1: %v", err)
	}
}

// TestPlanOpenWorld: what CRIU restores, mntv2 plans, from the same
// sources: UNSUPPORTED (fstype 0) mounts bound from the restore root or
// from an external mount of their superblock, in any namespace; a nested
// namespace whose root is a bind of a subdirectory of a tmpfs (runc's
// pivot_root into its rootfs); every filesystem type CRIU makes fresh.
func TestPlanOpenWorld(t *testing.T) {
	ext4 := func(id, parent uint32, mp, root string) forest.Mount {
		return forest.Mount{ID: id, ParentID: parent, Mountpoint: mp, Root: root, Dev: 8<<20 | 1, Source: "/dev/vda", Flags: forest.Relatime}
	}
	root := ext4(1, 1, "/", "/var/lib/ct/rootfs")
	usr := forest.Mount{ID: 2, ParentID: 1, Mountpoint: "/usr", Root: "/usr", Dev: 8<<20 | 2, External: "CRIU:AUTOGENERATED", Source: "/usr", Flags: forest.Relatime}
	data := ext4(3, 1, "/data", "/var/lib/ct/rootfs/srv/data")
	tmp := forest.Mount{ID: 4, ParentID: 1, Mountpoint: "/tmp", Root: "/", FSType: "tmpfs", FSCode: 5, Dev: 30, Flags: forest.Relatime}
	var fresh []forest.Mount
	id := uint32(10)
	for _, fs := range []string{"proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "debugfs", "securityfs", "pstore", "fusectl", "binfmt_misc", "devtmpfs"} {
		fresh = append(fresh, forest.Mount{ID: id, ParentID: 1, Mountpoint: "/m/" + fs, Root: "/", FSType: fs, FSCode: forest.FSTypeCode(fs), Dev: 100 + id, Flags: forest.Relatime})
		id++
	}
	auto := forest.Mount{ID: id, ParentID: 1, Mountpoint: "/m/ramfs", Root: "/", FSType: "ramfs", FSCode: 16, Dev: 200, Flags: forest.Relatime}
	// A nested namespace: its root a bind of /rootfs of the tmpfs, with a
	// copy of the external /usr (fstype 0, not external there) and of
	// the ext4 bind.
	nested := []forest.Mount{
		{ID: 50, ParentID: 50, Mountpoint: "/", Root: "/rootfs", FSType: "tmpfs", FSCode: 5, Dev: 30, Flags: forest.Relatime},
		{ID: 51, ParentID: 50, Mountpoint: "/usr", Root: "/usr/share", Dev: 8<<20 | 2, Source: "/dev/vdb", Flags: forest.Relatime},
		{ID: 52, ParentID: 50, Mountpoint: "/data", Root: "/var/lib/ct/rootfs/srv/data/x", Dev: 8<<20 | 1, Source: "/dev/vda", Flags: forest.Relatime},
	}
	f, err := forest.BuildImages([]forest.NamespaceMounts{
		{ID: 10, Mounts: append([]forest.Mount{root, usr, data, tmp, auto}, fresh...)},
		{ID: 11, Mounts: nested},
	})
	if err != nil {
		t.Fatal(err)
	}
	plan := planAndCheck(t, Input{Forest: f, Auto: true, RootNS: 10})
	text := planText(plan)
	for _, want := range []string{
		`create-namespace ns=10 h0(mnt 1)`,
		`bind             ns=10`, `(mnt 3) from=h0 path="srv/data"`,
		`(mnt 52) from=h0 path="srv/data/x"`,
		`(mnt 51) from=h`, `path="share"  # a mount of an external superblock, bound from /usr`,
		`(mnt 50) from=h`, `path="rootfs"`,
		`create-namespace ns=11 h`, `new-superblock   h`, ` ramfs source=""`, ` cgroup2 source=""`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("no step has %q:\n%s", want, text)
		}
	}
	// The restore root is the root task's namespace's root: taken for
	// namespace 11's, the ext4 root of namespace 10 has no source.
	_, err = NewPlan(Input{Forest: f, Auto: true, RootNS: 11})
	if err == nil || !strings.Contains(err.Error(), `namespace 10, mount 1 (/): a filesystem CRIU has no type for (fstype UNSUPPORTED) on superblock 8:1`) {
		t.Errorf("with namespace 11 as the root task's: %v", err)
	}
}

// External sharing in a standalone restore: an external mount that was a
// peer of its host mount joins the group of the host mount at its source
// path, and a bind of it that was its slave becomes a slave of that group
// (CRIU's mount-v2 makes them a new group of their own).
func TestPlanExternalSharing(t *testing.T) {
	f, err := forest.BuildImages([]forest.NamespaceMounts{{ID: 10, Mounts: []forest.Mount{
		{ID: 1, ParentID: 1, Mountpoint: "/", Root: "/", FSType: "tmpfs", Dev: 1},
		{ID: 2, ParentID: 1, Mountpoint: "/mnt/ext", Root: "/", FSType: "tmpfs", Dev: 50, PeerGroup: 5,
			External: "CRIU:AUTOGENERATED", Source: "/w/hostshare"},
		{ID: 3, ParentID: 1, Mountpoint: "/mnt/slave", Root: "/sub", FSType: "tmpfs", Dev: 50, Master: 5},
		{ID: 4, ParentID: 1, Mountpoint: "/mnt/hostslave", Root: "/", FSType: "tmpfs", Dev: 60, Master: 7,
			External: "vol", Source: "none"},
		{ID: 5, ParentID: 1, Mountpoint: "/mnt/rootslave", Root: "/srv", FSType: "tmpfs", Dev: 1, Master: 8},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	plan := planAndCheck(t, Input{Forest: f, Auto: true, External: map[string]string{"vol": "/srv/vol"}})
	text := planText(plan)
	for _, want := range []string{
		`open-host        h`, `path="/w/hostshare"  # the host side of the sharing of mount 2 (/mnt/ext)`,
		`set-group        ns=10 h`, `(mnt 2) from=h`, `(mnt 3) from=h`,
		`path="/srv/vol"  # the host side of the sharing of mount 4 (/mnt/hostslave)`,
		`path=""  # the host side of the sharing of mount 5 (/mnt/rootslave): the host mount of the restore root`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("no step has %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "make-shared") {
		t.Errorf("a new group was made for the host's:\n%s", text)
	}
}

// Deleted roots: each is made again in its source once, however many
// mounts share it, bound, and removed after the sharing (CRIU 4.2 makes it
// once per mount and fails on the second).
func TestPlanDeletedRoots(t *testing.T) {
	f, err := forest.BuildImages([]forest.NamespaceMounts{{ID: 10, Mounts: []forest.Mount{
		{ID: 1, ParentID: 1, Mountpoint: "/", Root: "/rootfs", FSType: "ext4", Dev: 8},
		{ID: 2, ParentID: 1, Mountpoint: "/tmp", Root: "/", FSType: "tmpfs", FSCode: 5, Dev: 30},
		{ID: 3, ParentID: 2, Mountpoint: "/tmp/m1", Root: "/x", FSType: "tmpfs", FSCode: 5, Dev: 30, Deleted: true, PeerGroup: 4},
		{ID: 4, ParentID: 2, Mountpoint: "/tmp/m2", Root: "/x", FSType: "tmpfs", FSCode: 5, Dev: 30, Deleted: true, PeerGroup: 4},
		{ID: 5, ParentID: 1, Mountpoint: "/data", Root: "/rootfs/srv/gone", Dev: 8, Deleted: true},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	plan := planAndCheck(t, Input{Forest: f, RootNS: 10})
	text := planText(plan)
	removes, lastSharing, firstRemove := 0, -1, -1
	for i, s := range plan.Steps {
		switch s.Op {
		case OpRemoveDeleted:
			removes++
			if firstRemove < 0 {
				firstRemove = i
			}
		case OpSetGroup, OpMakeShared:
			lastSharing = i
		}
	}
	if removes != 2 || firstRemove < lastSharing {
		t.Errorf("%d remove-deleted steps (want 2: /x once, /srv/gone), first at %d, last sharing at %d:\n%s", removes, firstRemove, lastSharing, text)
	}
	for _, want := range []string{`(mnt 3) from=h`, `path="x" deleted target="m1"`, `path="x" deleted target="m2"`, `(mnt 5) from=h0 under=h0 path="srv/gone" deleted target="data"`} {
		if !strings.Contains(text, want) {
			t.Errorf("no step has %q:\n%s", want, text)
		}
	}
}

// A named cgroup v1 hierarchy without controllers shows as name=X in
// mountinfo and is made with none; everything else keeps its options.
func TestFSOptions(t *testing.T) {
	for _, c := range []struct{ fs, in, want string }{
		{"cgroup", "name=systemd", "none,name=systemd"},
		{"cgroup", "xattr,name=systemd", "none,xattr,name=systemd"},
		{"cgroup", "cpu,name=x", "cpu,name=x"},
		{"cgroup", "none,name=x", "none,name=x"},
		{"cgroup", "memory", "memory"},
		{"tmpfs", "size=10k,name=x", "size=10k,name=x"},
	} {
		if got := fsOptions(&forest.Mount{FSType: c.fs, Options: c.in}); got != c.want {
			t.Errorf("%s %q: %q, want %q", c.fs, c.in, got, c.want)
		}
	}
}

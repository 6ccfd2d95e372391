package restore

import (
	"strings"
	"testing"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
)

// The plan of a container whose namespace its user namespace owns: the
// tmpfs and devpts the container made are made inside that user namespace,
// their options' ids and the archive's owners mapped from the container's
// to the host's, the content extracted as the container's root; an
// idmapped tmpfs (a runtime's volume) and proc are the restorer's.
func TestPlanOwnedSuperblocks(t *testing.T) {
	ct := &images.IDMaps{
		UID: []images.IDExtent{{First: 0, Lower: 100000, Count: 65536}},
		GID: []images.IDExtent{{First: 0, Lower: 200000, Count: 65536}},
	}
	nm := forest.NamespaceMounts{ID: 10, Owner: ct, OwnerKnown: true, Mounts: []forest.Mount{
		{ID: 1, Dev: 8<<20 | 1, Root: "/", Mountpoint: "/", FSType: "ext4", Source: "/dev/vda", Flags: forest.Relatime},
		{ID: 2, ParentID: 1, Dev: 47<<20 | 1, Root: "/", Mountpoint: "/tmp", FSType: "tmpfs", Source: "tmp", Options: "size=1024k,uid=0,gid=5,mode=1777"},
		{ID: 3, ParentID: 1, Dev: 47<<20 | 2, Root: "/", Mountpoint: "/vol", FSType: "tmpfs", Source: "vol", IDMap: ct},
		{ID: 4, ParentID: 1, Dev: 47<<20 | 3, Root: "/", Mountpoint: "/dev/pts", FSType: "devpts", Source: "devpts", Options: "gid=5,mode=620,ptmxmode=666"},
		{ID: 5, ParentID: 1, Dev: 47<<20 | 4, Root: "/", Mountpoint: "/proc", FSType: "proc", Source: "proc"},
	}}
	f, err := forest.Build([]forest.NamespaceMounts{nm})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := NewPlan(Input{Forest: f, TmpfsContent: map[uint32]bool{47<<20 | 1: true, 47<<20 | 2: true}})
	if err != nil {
		t.Fatal(err)
	}
	sbs := map[string]Step{}
	fills := map[uint32]Step{}
	for _, s := range plan.Steps {
		switch s.Op {
		case OpNewSuperblock:
			sbs[s.Source] = s
		case OpFillTmpfs:
			fills[s.Dev] = s
		}
	}
	for src, want := range map[string]struct {
		owned bool
		opts  string
	}{
		"tmp":    {true, "size=1024k,uid=100000,gid=200005,mode=1777"},
		"vol":    {false, ""},
		"devpts": {true, "gid=200005,mode=620,ptmxmode=666"},
		"proc":   {false, ""},
	} {
		s, ok := sbs[src]
		if !ok {
			t.Errorf("%s: no new superblock", src)
			continue
		}
		if s.UserNS != want.owned || s.Options != want.opts || want.owned && s.NS != 10 {
			t.Errorf("%s: owned %v, ns %d, options %q; want owned %v, options %q", src, s.UserNS, s.NS, s.Options, want.owned, want.opts)
		}
	}
	tmp, vol := fills[47<<20|1], fills[47<<20|2]
	if tmp.Owner.String() != ct.String() || tmp.AsRoot.String() != ct.String() || tmp.IDMap != nil {
		t.Errorf("/tmp's fill: owner %v, as root %v, idmap %v", tmp.Owner, tmp.AsRoot, tmp.IDMap)
	}
	if vol.Owner.String() != ct.String() || vol.AsRoot != nil || vol.IDMap.String() != ct.String() {
		t.Errorf("/vol's fill: owner %v, as root %v, idmap %v", vol.Owner, vol.AsRoot, vol.IDMap)
	}
	if !strings.Contains(tmp.Why, "root task's user namespace") {
		t.Errorf("/tmp's fill says not why: %s", tmp.Why)
	}
	// The archive's ids, as CRIU's tar wrote them inside the container,
	// land on the host's ids; through /vol's idmap, on the filesystem's.
	for _, c := range []struct{ in, tmp, vol int }{{0, 100000, 0}, {1000, 101000, 1000}, {70000, images.OverflowID, images.OverflowID}} {
		if got := images.ToParent(tmp.Owner.UID, c.in); got != c.tmp {
			t.Errorf("uid %d in /tmp: %d, want %d", c.in, got, c.tmp)
		}
		if got := unmapID(vol.IDMap.UID, images.ToParent(vol.Owner.UID, c.in)); got != c.vol {
			t.Errorf("uid %d in /vol: %d, want %d", c.in, got, c.vol)
		}
	}
}

package dump

import (
	"testing"

	"github.com/mntv2/mntv2/images"
)

// For a container in a user namespace, dump writes superblock ids and
// archive owners as the container sees them, as CRIU does
// (criu/proc_parse.c sb_opt_cb, tar run inside the user namespace); ids it
// does not map are the overflow id.
func TestContainerIDs(t *testing.T) {
	view := &images.IDMaps{
		UID: []images.IDExtent{{First: 0, Lower: 100000, Count: 65536}},
		GID: []images.IDExtent{{First: 0, Lower: 200000, Count: 1000}, {First: 1000, Lower: 300000, Count: 10}},
	}
	for _, c := range []struct{ in, uid, gid int }{{100000, 0, 65534}, {101000, 1000, 65534}, {200005, 65534, 5}, {300003, 65534, 1003}, {0, 65534, 65534}} {
		if got := containerID(view.UID, c.in); got != c.uid {
			t.Errorf("uid %d: %d, want %d", c.in, got, c.uid)
		}
		if got := containerID(view.GID, c.in); got != c.gid {
			t.Errorf("gid %d: %d, want %d", c.in, got, c.gid)
		}
	}
	if got, want := view.MapOptionIDs("rw,size=1024k,uid=100000,gid=200005,mode=1777,nr_inodes=7", containerID), "rw,size=1024k,uid=0,gid=5,mode=1777,nr_inodes=7"; got != want {
		t.Errorf("options: %q, want %q", got, want)
	}
}

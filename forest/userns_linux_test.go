package forest

import (
	"strconv"
	"strings"
	"testing"

	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/nsexec"
	"github.com/mntv2/mntv2/internal/testns"
	"golang.org/x/sys/unix"
)

var containerMaps = images.IDMaps{
	UID: []images.IDExtent{{First: 0, Lower: 100000, Count: 65536}},
	GID: []images.IDExtent{{First: 0, Lower: 200000, Count: 1000}, {First: 1000, Lower: 300000, Count: 10}},
}

// A live idmapped mount is read with its maps (statmount), and a mount
// namespace owned by a user namespace with that namespace's maps; both show
// in the text form and in a comparison.
func TestLiveIDMapsAndOwner(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	userns, err := nsexec.NewUserNamespace(containerMaps)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(userns)
	if got, err := nsexec.Maps(userns); err != nil || got.String() != containerMaps.String() {
		t.Fatalf("maps of the new user namespace: %v (%v), want %v", got, err, containerMaps)
	}
	// An idmapped tmpfs on a directory of this (private) namespace.
	dir := t.TempDir()
	fsfd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	must(t, err)
	must(t, unix.FsconfigCreate(fsfd))
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
	must(t, err)
	unix.Close(fsfd)
	must(t, unix.MountSetattr(mfd, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns)}))
	must(t, unix.MoveMount(mfd, "", unix.AT_FDCWD, dir, unix.MOVE_MOUNT_F_EMPTY_PATH))
	unix.Close(mfd)
	defer unix.Unmount(dir, unix.MNT_DETACH)

	nm, err := ReadNamespaceFile("/proc/thread-self/ns/mnt", 1)
	if err != nil {
		t.Fatal(err)
	}
	var found *Mount
	for i := range nm.Mounts {
		if nm.Mounts[i].Mountpoint == dir {
			found = &nm.Mounts[i]
		}
	}
	if found == nil || found.IDMap == nil || found.IDMap.String() != containerMaps.String() {
		t.Fatalf("the idmapped mount at %s: %+v", dir, found)
	}
	if !nm.OwnerKnown || nm.Owner != nil {
		t.Errorf("this test's own namespace: owner %v (known %v), want the initial user namespace", nm.Owner, nm.OwnerKnown)
	}
	if got := found.TextLine(); !strings.Contains(got, "idmap=u:0:100000:65536,g:0:200000:1000,g:1000:300000:10") {
		t.Errorf("text line %q lacks the idmap", got)
	}

	// A mount namespace owned by that user namespace, a copy of this one.
	self, err := unix.Open("/proc/thread-self/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(self)
	owned, err := nsexec.NewMountNamespace(userns, self)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(owned)
	path := "/proc/self/fd/" + strconv.Itoa(owned)
	onm, err := ReadNamespaceFile(path, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !onm.OwnerKnown || onm.Owner == nil || onm.Owner.String() != containerMaps.String() {
		t.Fatalf("owner of the new namespace: %v", onm.Owner)
	}
	a, err := Build([]NamespaceMounts{nm})
	must(t, err)
	b, err := Build([]NamespaceMounts{onm})
	must(t, err)
	var owner bool
	for _, d := range Compare(a, b) {
		if strings.Contains(d.String(), "owning user namespace") {
			owner = true
		}
	}
	if !owner {
		t.Errorf("Compare does not report the owner: %v", Compare(a, b))
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

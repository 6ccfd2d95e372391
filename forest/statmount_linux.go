package forest

import (
	"bytes"
	"fmt"
	"strings"
	"unsafe"

	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/mntns"
	"github.com/mntv2/mntv2/internal/nsexec"
	"golang.org/x/sys/unix"
)

// statmount(2) and listmount(2) (Linux 6.8; the id maps of an idmapped
// mount since 6.15), from include/uapi/linux/mount.h.
const (
	sysStatmount = 457
	sysListmount = 458

	statmountMntBasic = 0x00000002
	statmountUIDMap   = 0x00002000
	statmountGIDMap   = 0x00004000

	mntIDReqSizeVer1 = 32
	lsmtRoot         = ^uint64(0)
)

type mntIDReq struct {
	Size    uint32
	NSFd    uint32
	MntID   uint64
	Param   uint64
	MntNSID uint64
}

type statmountBuf struct {
	Size           uint32
	MntOpts        uint32
	Mask           uint64
	SbDevMajor     uint32
	SbDevMinor     uint32
	SbMagic        uint64
	SbFlags        uint32
	FSType         uint32
	MntID          uint64
	MntParentID    uint64
	MntIDOld       uint32
	MntParentIDOld uint32
	MntAttr        uint64
	MntPropagation uint64
	MntPeerGroup   uint64
	MntMaster      uint64
	PropagateFrom  uint64
	MntRoot        uint32
	MntPoint       uint32
	MntNSID        uint64
	FSSubtype      uint32
	SbSource       uint32
	OptNum         uint32
	OptArray       uint32
	OptSecNum      uint32
	OptSecArray    uint32
	SupportedMask  uint64
	MntUIDMapNum   uint32
	MntUIDMap      uint32
	MntGIDMapNum   uint32
	MntGIDMap      uint32
	_              [43]uint64
}

// statmount reads mask of the mount with unique id id in the mount
// namespace nsID (0: the calling thread's), into buf; it returns the
// fixed part and the string area.
func statmount(id, nsID, mask uint64, buf []byte) (*statmountBuf, []byte, error) {
	req := mntIDReq{Size: mntIDReqSizeVer1, MntID: id, Param: mask, MntNSID: nsID}
	for {
		_, _, e := unix.Syscall6(sysStatmount, uintptr(unsafe.Pointer(&req)), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0, 0, 0)
		if e == unix.EOVERFLOW && len(buf) < 1<<20 {
			buf = make([]byte, 2*len(buf))
			continue
		}
		if e != 0 {
			return nil, nil, e
		}
		sm := (*statmountBuf)(unsafe.Pointer(&buf[0]))
		return sm, buf[unsafe.Sizeof(statmountBuf{}):sm.Size], nil
	}
}

// listmount lists the unique ids of every mount of the mount namespace
// nsID (0: the calling thread's).
func listmount(nsID uint64) ([]uint64, error) {
	var out []uint64
	ids := make([]uint64, 512)
	req := mntIDReq{Size: mntIDReqSizeVer1, MntID: lsmtRoot, MntNSID: nsID}
	for {
		n, _, e := unix.Syscall6(sysListmount, uintptr(unsafe.Pointer(&req)), uintptr(unsafe.Pointer(&ids[0])), uintptr(len(ids)), 0, 0, 0)
		if e != 0 {
			return nil, e
		}
		out = append(out, ids[:n]...)
		if int(n) < len(ids) {
			return out, nil
		}
		req.Param = ids[n-1]
	}
}

// cstrings reads n NUL-terminated strings from off in the string area.
func cstrings(str []byte, off uint32, n uint32) []string {
	var out []string
	if int(off) > len(str) {
		return nil
	}
	rest := str[off:]
	for i := uint32(0); i < n; i++ {
		j := bytes.IndexByte(rest, 0)
		if j < 0 {
			break
		}
		out = append(out, string(rest[:j]))
		rest = rest[j+1:]
	}
	return out
}

// fillIDMaps gives each mount of nm that mountinfo marks idmapped its uid
// and gid maps, read with statmount in the mount namespace nsID (0: the
// calling thread's).
func fillIDMaps(nm *NamespaceMounts, nsID uint64) error {
	want := map[uint32]*Mount{}
	for i := range nm.Mounts {
		if nm.Mounts[i].IDMap != nil {
			want[nm.Mounts[i].ID] = &nm.Mounts[i]
		}
	}
	if len(want) == 0 {
		return nil
	}
	ids, err := listmount(nsID)
	if err != nil {
		return fmt.Errorf("listmount: %w (the maps of idmapped mounts need Linux 6.15)", err)
	}
	buf := make([]byte, 4096)
	for _, id := range ids {
		sm, _, err := statmount(id, nsID, statmountMntBasic, buf)
		if err != nil {
			continue // gone meanwhile
		}
		m := want[sm.MntIDOld]
		if m == nil {
			continue
		}
		sm, str, err := statmount(id, nsID, statmountUIDMap|statmountGIDMap, buf)
		if err != nil {
			return fmt.Errorf("statmount of mount %d (%s): %w", m.ID, m.Mountpoint, err)
		}
		if sm.Mask&(statmountUIDMap|statmountGIDMap) != statmountUIDMap|statmountGIDMap {
			return fmt.Errorf("mount %d (%s) is idmapped, and this kernel's statmount does not give the maps (Linux 6.15)", m.ID, m.Mountpoint)
		}
		uid, err := nsexec.ParseMap(strings.Join(cstrings(str, sm.MntUIDMap, sm.MntUIDMapNum), "\n"))
		if err != nil {
			return fmt.Errorf("mount %d: uid map: %w", m.ID, err)
		}
		gid, err := nsexec.ParseMap(strings.Join(cstrings(str, sm.MntGIDMap, sm.MntGIDMapNum), "\n"))
		if err != nil {
			return fmt.Errorf("mount %d: gid map: %w", m.ID, err)
		}
		m.IDMap = &images.IDMaps{UID: uid, GID: gid}
	}
	return nil
}

// ownerOf gives the maps of the user namespace that owns the namespace of
// an nsfs fd (ioctl NS_GET_USERNS), nil when it is this process's own.
func ownerOf(nsfd int) (*images.IDMaps, error) {
	userns, err := mntns.Owner(nsfd)
	if err != nil {
		return nil, err
	}
	return userNamespaceMaps(userns)
}

// userNamespaceMaps gives the maps of a user namespace (an nsfs fd, which
// it closes), nil when it is this process's own.
func userNamespaceMaps(userns int) (*images.IDMaps, error) {
	defer unix.Close(userns)
	var theirs, ours unix.Stat_t
	if err := unix.Fstat(userns, &theirs); err != nil {
		return nil, err
	}
	if err := unix.Stat("/proc/self/ns/user", &ours); err != nil {
		return nil, err
	}
	if theirs.Dev == ours.Dev && theirs.Ino == ours.Ino {
		return nil, nil
	}
	m, err := nsexec.Maps(userns)
	if err != nil {
		return nil, err
	}
	return &m, nil
}

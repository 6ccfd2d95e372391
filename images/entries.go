package images

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fs"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/userns"
	"google.golang.org/protobuf/proto"
)

// Mount is one MntEntry of a mountpoints-<ns>.img, as plain values.
type Mount struct {
	FSType          uint32 // CRIU's fstype enum; FSName names AUTO ones
	MntID           uint32
	RootDev         uint32 // kernel kdev_t: major<<20 | minor
	ParentMntID     uint32
	Flags           uint32 // per-mount MS_* flags, including propagation bits
	Root            string
	Mountpoint      string
	Source          string
	Options         string
	SharedID        uint32
	MasterID        uint32
	WithPlugin      bool
	ExtMount        bool
	FSName          string
	InternalSharing bool
	Deleted         bool
	SbFlags         uint32
	ExtKey          string
}

// Task is one PstreeEntry.
type Task struct {
	Pid, Ppid, Pgid, Sid uint32
	Threads              []uint32
}

// TaskIDs are the namespace ids of a task (TaskKobjIdsEntry); zero when absent.
type TaskIDs struct {
	VMID, FilesID, FSID, SighandID                      uint32
	PidNS, NetNS, IpcNS, UtsNS, MntNS, UserNS, CgroupNS uint32
	TimeNS                                              uint32
}

// InventoryInfo is the part of the InventoryEntry mntv2 uses.
type InventoryInfo struct {
	ImgVersion uint32
	RootIDs    TaskIDs
	HasRootIDs bool
	NSPerID    bool
}

// IDExtent is one line of a user namespace's uid_map or gid_map: Count ids
// from First inside map to Lower and on outside (in the parent namespace).
type IDExtent struct {
	First uint32 `json:"first"`
	Lower uint32 `json:"lower"`
	Count uint32 `json:"count"`
}

// IDMaps are a user namespace's uid and gid maps (a UsernsEntry), or an
// idmapped mount's.
type IDMaps struct {
	UID []IDExtent `json:"uid"`
	GID []IDExtent `json:"gid"`
}

// String is the maps as /proc/PID/uid_map has them, on one line:
// "u:0:100000:65536 g:0:100000:65536".
// OverflowID is the id a user namespace shows for one it does not map
// (/proc/sys/kernel/overflowuid's default).
const OverflowID = 65534

// ToParent is the id in the parent user namespace of id of a namespace with
// extents es (First+k there is Lower+k here); OverflowID for one es does
// not map.
func ToParent(es []IDExtent, id int) int {
	for _, e := range es {
		if id >= int(e.First) && id-int(e.First) < int(e.Count) {
			return int(e.Lower) + id - int(e.First)
		}
	}
	return OverflowID
}

// FromParent is the id in a namespace with extents es of id of its parent
// (Lower+k here is First+k there), and false for one es does not map.
func FromParent(es []IDExtent, id int) (int, bool) {
	for _, e := range es {
		if id >= int(e.Lower) && id-int(e.Lower) < int(e.Count) {
			return int(e.First) + id - int(e.Lower), true
		}
	}
	return id, false
}

// MapOptionIDs rewrites the uid= and gid= of a superblock's options with f
// of m's uid or gid extents (CRIU writes them as the root task's user
// namespace shows them: criu/proc_parse.c sb_opt_cb).
func (m IDMaps) MapOptionIDs(opts string, f func(es []IDExtent, id int) int) string {
	if opts == "" {
		return opts
	}
	parts := strings.Split(opts, ",")
	for i, o := range parts {
		key, val, _ := strings.Cut(o, "=")
		es := map[string][]IDExtent{"uid": m.UID, "gid": m.GID}[key]
		if id, err := strconv.ParseUint(val, 10, 32); es != nil && err == nil {
			parts[i] = key + "=" + strconv.Itoa(f(es, int(id)))
		}
	}
	return strings.Join(parts, ",")
}

func (m IDMaps) String() string {
	var b []byte
	for _, part := range []struct {
		k  string
		es []IDExtent
	}{{"u", m.UID}, {"g", m.GID}} {
		for _, e := range part.es {
			if len(b) > 0 {
				b = append(b, ' ')
			}
			b = fmt.Appendf(b, "%s:%d:%d:%d", part.k, e.First, e.Lower, e.Count)
		}
	}
	return string(b)
}

// FSInfo is an FsEntry: the cwd and root file ids of a task.
type FSInfo struct {
	CwdID, RootID, Umask uint32
}

func decodeRecord(img *Image, i int, m proto.Message) error {
	if err := proto.Unmarshal(img.Records[i], m); err != nil {
		return &FormatError{File: img.File, Offset: img.recordOffset(i),
			Err: fmt.Errorf("%w: record %d: %v", ErrBadRecord, i, err)}
	}
	return nil
}

// recordOffset is the byte offset of record i's header in the file.
func (img *Image) recordOffset(i int) int64 {
	off := int64(4)
	if img.Type.Common {
		off = 8
	}
	for _, r := range img.Records[:i] {
		off += 4 + int64(len(r))
	}
	return off
}

// Mounts decodes a mountpoints image.
func (img *Image) Mounts() ([]Mount, error) {
	out := make([]Mount, 0, len(img.Records))
	var e mnt.MntEntry
	for i := range img.Records {
		if err := decodeRecord(img, i, &e); err != nil {
			return nil, err
		}
		out = append(out, mountFromEntry(&e))
	}
	return out, nil
}

func mountFromEntry(e *mnt.MntEntry) Mount {
	return Mount{
		FSType: e.GetFstype(), MntID: e.GetMntId(), RootDev: e.GetRootDev(),
		ParentMntID: e.GetParentMntId(), Flags: e.GetFlags(), Root: e.GetRoot(),
		Mountpoint: e.GetMountpoint(), Source: e.GetSource(), Options: e.GetOptions(),
		SharedID: e.GetSharedId(), MasterID: e.GetMasterId(), WithPlugin: e.GetWithPlugin(),
		ExtMount: e.GetExtMount(), FSName: e.GetFsname(), InternalSharing: e.GetInternalSharing(),
		Deleted: e.GetDeleted(), SbFlags: e.GetSbFlags(), ExtKey: e.GetExtKey(),
	}
}

func entryFromMount(m *Mount) *mnt.MntEntry {
	e := &mnt.MntEntry{
		Fstype: proto.Uint32(m.FSType), MntId: proto.Uint32(m.MntID), RootDev: proto.Uint32(m.RootDev),
		ParentMntId: proto.Uint32(m.ParentMntID), Flags: proto.Uint32(m.Flags), Root: proto.String(m.Root),
		Mountpoint: proto.String(m.Mountpoint), Source: proto.String(m.Source), Options: proto.String(m.Options),
	}
	// Optional fields are written the way CRIU 4.2 writes them: shared_id,
	// master_id and sb_flags always, the others only when set.
	e.SharedId, e.MasterId, e.SbFlags = proto.Uint32(m.SharedID), proto.Uint32(m.MasterID), proto.Uint32(m.SbFlags)
	if m.WithPlugin {
		e.WithPlugin = proto.Bool(true)
	}
	if m.ExtMount {
		e.ExtMount = proto.Bool(true)
	}
	if m.FSName != "" {
		e.Fsname = proto.String(m.FSName)
	}
	if m.InternalSharing {
		e.InternalSharing = proto.Bool(true)
	}
	if m.Deleted {
		e.Deleted = proto.Bool(true)
	}
	if m.ExtKey != "" {
		e.ExtKey = proto.String(m.ExtKey)
	}
	return e
}

var marshal = proto.MarshalOptions{Deterministic: true}

// MarshalMount is m as one record of a mountpoints image: the bytes of its
// MntEntry, without the record's length.
func MarshalMount(m Mount) ([]byte, error) { return marshal.Marshal(entryFromMount(&m)) }

// UnmarshalMount reads a MarshalMount record.
func UnmarshalMount(b []byte) (Mount, error) {
	if len(b) > DefaultLimits.MaxRecord {
		return Mount{}, fmt.Errorf("a mount record of %d bytes: %w (at most %d)", len(b), ErrTooLarge, DefaultLimits.MaxRecord)
	}
	var e mnt.MntEntry
	if err := proto.Unmarshal(b, &e); err != nil {
		return Mount{}, fmt.Errorf("a mount record: %w", err)
	}
	return mountFromEntry(&e), nil
}

func encodeAll[M proto.Message](t Type, file string, msgs []M) (*Image, error) {
	img := &Image{File: file, Type: t, Records: make([][]byte, 0, len(msgs))}
	for _, m := range msgs {
		b, err := marshal.Marshal(m)
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", file, err)
		}
		img.Records = append(img.Records, b)
	}
	return img, nil
}

// EncodeMounts builds a mountpoints image from mounts.
func EncodeMounts(nsID uint32, mounts []Mount) (*Image, error) {
	entries := make([]*mnt.MntEntry, len(mounts))
	for i := range mounts {
		entries[i] = entryFromMount(&mounts[i])
	}
	return encodeAll(Mountpoints, MountpointsFile(nsID), entries)
}

// Tasks decodes a pstree image.
func (img *Image) Tasks() ([]Task, error) {
	out := make([]Task, 0, len(img.Records))
	for i := range img.Records {
		var e pstree.PstreeEntry
		if err := decodeRecord(img, i, &e); err != nil {
			return nil, err
		}
		out = append(out, Task{Pid: e.GetPid(), Ppid: e.GetPpid(), Pgid: e.GetPgid(), Sid: e.GetSid(), Threads: e.GetThreads()})
	}
	return out, nil
}

// EncodeTasks builds a pstree image.
func EncodeTasks(tasks []Task) (*Image, error) {
	entries := make([]*pstree.PstreeEntry, len(tasks))
	for i, t := range tasks {
		entries[i] = &pstree.PstreeEntry{Pid: proto.Uint32(t.Pid), Ppid: proto.Uint32(t.Ppid),
			Pgid: proto.Uint32(t.Pgid), Sid: proto.Uint32(t.Sid), Threads: t.Threads}
	}
	return encodeAll(Pstree, "pstree.img", entries)
}

// one returns the only record of an image that must hold exactly one.
func (img *Image) one(m proto.Message) error {
	if len(img.Records) != 1 {
		return &FormatError{File: img.File, Offset: -1,
			Err: fmt.Errorf("%w: %d records, want exactly 1", ErrBadRecord, len(img.Records))}
	}
	return decodeRecord(img, 0, m)
}

func idsFromEntry(e *criu_core.TaskKobjIdsEntry) TaskIDs {
	return TaskIDs{
		VMID: e.GetVmId(), FilesID: e.GetFilesId(), FSID: e.GetFsId(), SighandID: e.GetSighandId(),
		PidNS: e.GetPidNsId(), NetNS: e.GetNetNsId(), IpcNS: e.GetIpcNsId(), UtsNS: e.GetUtsNsId(),
		MntNS: e.GetMntNsId(), UserNS: e.GetUserNsId(), CgroupNS: e.GetCgroupNsId(), TimeNS: e.GetTimeNsId(),
	}
}

func entryFromIDs(t TaskIDs) *criu_core.TaskKobjIdsEntry {
	e := &criu_core.TaskKobjIdsEntry{VmId: proto.Uint32(t.VMID), FilesId: proto.Uint32(t.FilesID),
		FsId: proto.Uint32(t.FSID), SighandId: proto.Uint32(t.SighandID)}
	opt := func(v uint32) *uint32 {
		if v == 0 {
			return nil
		}
		return proto.Uint32(v)
	}
	e.PidNsId, e.NetNsId, e.IpcNsId, e.UtsNsId = opt(t.PidNS), opt(t.NetNS), opt(t.IpcNS), opt(t.UtsNS)
	e.MntNsId, e.UserNsId, e.CgroupNsId, e.TimeNsId = opt(t.MntNS), opt(t.UserNS), opt(t.CgroupNS), opt(t.TimeNS)
	return e
}

// TaskIDs decodes an ids-<pid> image.
func (img *Image) TaskIDs() (TaskIDs, error) {
	var e criu_core.TaskKobjIdsEntry
	if err := img.one(&e); err != nil {
		return TaskIDs{}, err
	}
	return idsFromEntry(&e), nil
}

// EncodeTaskIDs builds an ids-<pid> image.
func EncodeTaskIDs(pid uint32, ids TaskIDs) (*Image, error) {
	return encodeAll(IDs, IDsFile(pid), []*criu_core.TaskKobjIdsEntry{entryFromIDs(ids)})
}

// Inventory decodes an inventory image.
func (img *Image) Inventory() (InventoryInfo, error) {
	var e inventory.InventoryEntry
	if err := img.one(&e); err != nil {
		return InventoryInfo{}, err
	}
	info := InventoryInfo{ImgVersion: e.GetImgVersion(), NSPerID: e.GetNsPerId()}
	if e.RootIds != nil {
		info.RootIDs, info.HasRootIDs = idsFromEntry(e.RootIds), true
	}
	return info, nil
}

// CRIU's CRTOOLS_IMAGES_V1_1, the version CRIU 3.x and 4.x write.
const imgVersionV11 = 2

// EncodeInventory builds an inventory image naming root's namespaces.
func EncodeInventory(root TaskIDs) (*Image, error) {
	e := &inventory.InventoryEntry{ImgVersion: proto.Uint32(imgVersionV11),
		FdinfoPerId: proto.Bool(true), RootIds: entryFromIDs(root), NsPerId: proto.Bool(true)}
	return encodeAll(Inventory, "inventory.img", []*inventory.InventoryEntry{e})
}

// FSInfo decodes an fs-<pid> image.
func (img *Image) FSInfo() (FSInfo, error) {
	var e fs.FsEntry
	if err := img.one(&e); err != nil {
		return FSInfo{}, err
	}
	return FSInfo{CwdID: e.GetCwdId(), RootID: e.GetRootId(), Umask: e.GetUmask()}, nil
}

// StripSharing returns a copy of a mountpoints image in which no mount has a
// peer group or a master, nor is unbindable: shared_id and master_id are
// dropped and the MS_SHARED, MS_SLAVE and MS_UNBINDABLE bits cleared. CRIU
// then restores an all-private tree that can be bound from (mntv2's hook
// makes mounts unbindable last, as it does the sharing). Records that carry
// none of it keep their original bytes.
func (img *Image) StripSharing() (*Image, int, error) {
	return img.stripped(nil)
}

// stripped is StripSharing of the records whose mount keep holds (all when
// keep is nil); the others are left out.
func (img *Image) stripped(keep map[uint32]bool) (*Image, int, error) {
	return img.strippedRecords(nil, keep)
}

// KeepRecords is KeepMounts by record: it keeps record i when keep[i]
// (the i-th of Mounts), decoding only those.
func (img *Image) KeepRecords(keep []bool) (*Image, int, error) {
	if len(keep) != len(img.Records) {
		return nil, 0, fmt.Errorf("%s: %d records, %d to keep or drop", img.File, len(img.Records), len(keep))
	}
	out, _, err := img.strippedRecords(keep, nil)
	if err != nil {
		return nil, 0, err
	}
	return out, len(img.Records) - len(out.Records), nil
}

func (img *Image) strippedRecords(keepIdx []bool, keep map[uint32]bool) (*Image, int, error) {
	out := &Image{File: img.File, Type: img.Type, Records: make([][]byte, 0, len(img.Records))}
	changed := 0
	var e mnt.MntEntry
	for i, rec := range img.Records {
		if keepIdx != nil && !keepIdx[i] {
			continue
		}
		if err := decodeRecord(img, i, &e); err != nil {
			return nil, 0, err
		}
		if keep != nil && !keep[e.GetMntId()] {
			continue
		}
		if e.GetSharedId() == 0 && e.GetMasterId() == 0 && e.GetFlags()&(msShared|msSlave|msUnbindable) == 0 {
			out.Records = append(out.Records, rec)
			continue
		}
		// Keep the fields present, as CRIU writes them, but zero.
		if e.SharedId != nil {
			e.SharedId = proto.Uint32(0)
		}
		if e.MasterId != nil {
			e.MasterId = proto.Uint32(0)
		}
		e.Flags = proto.Uint32(e.GetFlags() &^ (msShared | msSlave | msUnbindable))
		b, err := marshal.Marshal(&e)
		if err != nil {
			return nil, 0, fmt.Errorf("encode %s record %d: %w", img.File, i, err)
		}
		out.Records = append(out.Records, b)
		changed++
	}
	return out, changed, nil
}

// KeepMounts returns a copy of a mountpoints image with only the mounts
// whose ids keep holds, without sharing (as StripSharing): what CRIU is
// left to restore when mntv2 makes the rest. It returns the number of
// records dropped.
func (img *Image) KeepMounts(keep map[uint32]bool) (*Image, int, error) {
	if keep == nil {
		keep = map[uint32]bool{}
	}
	out, _, err := img.stripped(keep)
	if err != nil {
		return nil, 0, err
	}
	return out, len(img.Records) - len(out.Records), nil
}

// MS_SHARED and MS_SLAVE from <linux/mount.h>; kept here so this file has no
// platform dependency.
const (
	msUnbindable = 1 << 17
	msSlave      = 1 << 19
	msShared     = 1 << 20
)

// File names of images.
func MountpointsFile(nsID uint32) string { return fmt.Sprintf("mountpoints-%d.img", nsID) }
func IDsFile(pid uint32) string          { return fmt.Sprintf("ids-%d.img", pid) }
func FSFile(pid uint32) string           { return fmt.Sprintf("fs-%d.img", pid) }
func TmpfsFile(dev uint32) string        { return fmt.Sprintf("tmpfs-dev-%d.tar.gz.img", dev) }

// AppendMounts adds mounts to a mountpoints image.
func (img *Image) AppendMounts(ms []Mount) error {
	for i := range ms {
		b, err := marshal.Marshal(entryFromMount(&ms[i]))
		if err != nil {
			return fmt.Errorf("encode %s record: %w", img.File, err)
		}
		img.Records = append(img.Records, b)
	}
	return nil
}

// UsernsFile is the image of user namespace id.
func UsernsFile(id uint32) string { return fmt.Sprintf("userns-%d.img", id) }

// IDMaps reads the UsernsEntry of a userns image.
func (img *Image) IDMaps() (IDMaps, error) {
	var e userns.UsernsEntry
	if err := img.one(&e); err != nil {
		return IDMaps{}, err
	}
	conv := func(es []*userns.UidGidExtent) []IDExtent {
		out := make([]IDExtent, 0, len(es))
		for _, x := range es {
			out = append(out, IDExtent{First: x.GetFirst(), Lower: x.GetLowerFirst(), Count: x.GetCount()})
		}
		return out
	}
	return IDMaps{UID: conv(e.GetUidMap()), GID: conv(e.GetGidMap())}, nil
}

// EncodeUserns builds userns-<id>.img with maps.
func EncodeUserns(id uint32, m IDMaps) (*Image, error) {
	conv := func(es []IDExtent) []*userns.UidGidExtent {
		out := make([]*userns.UidGidExtent, len(es))
		for i, e := range es {
			out[i] = &userns.UidGidExtent{First: proto.Uint32(e.First), LowerFirst: proto.Uint32(e.Lower), Count: proto.Uint32(e.Count)}
		}
		return out
	}
	return encodeAll(Userns, UsernsFile(id), []*userns.UsernsEntry{{UidMap: conv(m.UID), GidMap: conv(m.GID)}})
}

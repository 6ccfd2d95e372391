package images

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fh"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fsnotify"
	"google.golang.org/protobuf/encoding/protowire"
)

// What the images other than mountpoints-*.img say about mounts: which
// mounts CRIU's restore reaches by id (criu/files-reg.c open_path,
// criu/sk-unix.c prep_unix_sk_cwd, criu/fsnotify.c get_mark_path and
// restore_one_fanotify: a missing one stops the restore), and whether the
// images may name mounts in ways mntv2 cannot see. Every such record of
// CRIU 3.4 and later is in files.img: regular files (which fds, cwd and
// root, exe, file mappings, fifos and ttys point to), unix sockets bound in
// the filesystem, and fsnotify marks.

// MountRefs are the mounts the images' records name.
type MountRefs struct {
	// IDs maps a mount id (the dump's, as in MntEntry.mnt_id) to what
	// names it: "file /etc/passwd", "unix socket /run/x.sock", ...
	IDs map[uint32]string
	// Devs are superblocks (kdev_t) of fsnotify marks CRIU reopens by
	// file handle through any directory mount of the superblock.
	Devs map[uint32]string
	// KeepAll, when set, says why every mount must stay CRIU's to
	// restore: the images may name mounts mntv2 cannot tell.
	KeepAll string
}

// Files is the type of files.img.
var Files = Type{Name: "files", Magic: 0x56303138, Common: true}

// imageKinds are the image file names of a CRIU dump that name no mount,
// or name mounts only through files.img or mountpoints (criu/image-desc.c);
// tmpfs content, binfmt_misc and autofs images belong to mounts CRIU
// restores itself, and mntv2's own files are kept by its hook.
// Compiled on first use, not at every start of mntv2.
var imageKinds = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^(` + strings.Join([]string{
		`inventory`, `pstree`, `files`, `seccomp`, `cgroup`, `apparmor`, `cpuinfo`, `sk-queues`,
		`pipes-data`, `fifo-data`, `tty-info`, `tty-data`, `filelocks`, `memfd`, `bpfmap-data`,
		`remap-fpath`, `irmap-cache`, `binfmt-misc`,
		`(core|ids|mm|vmas|fs|fdinfo|sigacts|itimers|posix-timers|creds|rlimit|signal-s|signal-p)-[0-9]+`,
		`(pagemap|pagemap-shmem|pages|pages-shmem)-[0-9]+`,
		`(utsns|ipcns-var|ipcns-shm|ipcns-msg|ipcns-sem|userns|timens|pidns|netns|netdev|ifaddr|route|route6|rule|iptables|ip6tables|nftables|netns-ct|netns-exp)-[0-9]+`,
		`(tcp-stream|ghost-file)-[0-9a-f]+`, `mountpoints-[0-9]+`, `binfmt-misc-[0-9]+`, `autofs-[0-9]+`,
	}, "|") + `)\.img$|^tmpfs-(dev-)?[0-9]+\.tar\.gz\.img$|^stats-[a-z]+$|^mntv2-|^\.mntv2-`)
})

// Files that are in images directories but are no images CRIU reads.
func notAnImage(name string) bool {
	ext := path.Ext(name)
	return ext == ".log" || ext == ".json" || name == "parent" || strings.HasPrefix(name, ".") && !strings.HasPrefix(name, ".mntv2-")
}

// usk_extern (criu/sk-unix.c): a peer outside the dumped tree, connected by
// name in the root mount namespace.
const uskExtern = 1

// MountRefs reads what the images name of mounts.
func (d *Dir) MountRefs() (MountRefs, error) {
	refs := MountRefs{IDs: map[uint32]string{}, Devs: map[uint32]string{}}
	names, err := d.Names()
	if err != nil {
		return refs, err
	}
	slices.Sort(names)
	for _, n := range names {
		if !imageKinds().MatchString(n) && !notAnImage(n) {
			refs.KeepAll = fmt.Sprintf("%s is an image mntv2 does not know, and it may name mounts", n)
			return refs, nil
		}
	}
	if plugins, err := d.inventoryPlugins(); err != nil {
		return refs, err
	} else if plugins {
		refs.KeepAll = "inventory.img names CRIU plugins, which may restore files on any mount"
		return refs, nil
	}
	if !d.Exists("files.img") {
		refs.KeepAll = "the images have no files.img (a CRIU older than 3.4 writes files to other images)"
		return refs, nil
	}
	img, err := d.ReadImage("files.img", Files)
	if err != nil {
		return refs, err
	}
	if len(img.Records) == 0 {
		refs.KeepAll = "files.img is empty: CRIU then reads the files from older images"
		return refs, nil
	}
	regs := map[uint32]bool{}
	var ttys []uint32
	var fe fdinfo.FileEntry
	for i := range img.Records {
		if err := decodeRecord(img, i, &fe); err != nil {
			return refs, err
		}
		why := refs.file(&fe)
		if why != "" {
			refs.KeepAll = fmt.Sprintf("files.img record %d: %s", i, why)
			return refs, nil
		}
		switch fe.GetType() {
		case fdinfo.FdTypes_REG:
			regs[fe.GetId()] = true
		case fdinfo.FdTypes_TTY:
			if fe.Tty.RegfId == nil {
				ttys = append(ttys, fe.GetId())
			}
		}
	}
	for _, id := range ttys {
		if !regs[id] {
			refs.KeepAll = fmt.Sprintf("files.img: tty %d has no file record (CRIU then opens a pty by path)", id)
			return refs, nil
		}
	}
	return refs, nil
}

// file notes the mounts one files.img record names, or says why the
// images must be restored whole.
func (refs *MountRefs) file(fe *fdinfo.FileEntry) string {
	switch fe.GetType() {
	case fdinfo.FdTypes_REG:
		r := fe.GetReg()
		if r.GetMntId() < 0 {
			return fmt.Sprintf("file %s has no mount id (CRIU looks it up by path)", r.GetName())
		}
		refs.add(uint32(r.GetMntId()), "file "+r.GetName())
	case fdinfo.FdTypes_UNIXSK:
		u := fe.GetUsk()
		if len(u.GetName()) == 0 || u.GetName()[0] == 0 {
			return "" // unnamed or abstract: no file
		}
		name := strings.TrimRight(string(u.GetName()), "\x00") // CRIU keeps the address's NUL
		if u.GetUflags()&uskExtern != 0 {
			return fmt.Sprintf("unix socket %s has a peer outside the tree, connected by path", name)
		}
		if u.GetMntId() < 0 {
			return fmt.Sprintf("unix socket %s has no mount id", name)
		}
		refs.add(uint32(u.GetMntId()), "unix socket "+name)
	case fdinfo.FdTypes_INOTIFY:
		for _, wd := range fe.GetIfy().GetWd() {
			if why := refs.handle(wd.GetFHandle(), wd.GetSDev(), "inotify watch"); why != "" {
				return why
			}
		}
	case fdinfo.FdTypes_FANOTIFY:
		for _, mk := range fe.GetFfy().GetMark() {
			switch mk.GetType() {
			case fsnotify.MarkType_MOUNT:
				// CRIU writes the path only when no mntns is dumped.
				refs.add(mk.GetMe().GetMntId(), strings.TrimSpace("fanotify mount mark "+mk.GetMe().GetPath()))
			default:
				if why := refs.handle(mk.GetIe().GetFHandle(), mk.GetSDev(), "fanotify mark"); why != "" {
					return why
				}
			}
		}
	case fdinfo.FdTypes_EXT:
		return "a file a CRIU plugin restores (EXT), which may be on any mount"
	}
	return ""
}

// handle notes the mount of an fsnotify mark's file handle: by id, or by
// superblock when CRIU reopens it by handle alone.
func (refs *MountRefs) handle(h *fh.FhEntry, dev uint32, what string) string {
	switch {
	case h.MntId != nil:
		refs.add(h.GetMntId(), what+" "+h.GetPath())
	case h.Path != nil:
		return fmt.Sprintf("%s on %s has no mount id (CRIU looks it up by path)", what, h.GetPath())
	default:
		if _, ok := refs.Devs[dev]; !ok {
			refs.Devs[dev] = what + " (by file handle)"
		}
	}
	return ""
}

func (refs *MountRefs) add(id uint32, what string) {
	if _, ok := refs.IDs[id]; !ok {
		refs.IDs[id] = what
	}
}

// inventoryPlugins says whether inventory.img names CRIU plugins (field 12,
// plugins_entry, which go-criu v7's InventoryEntry lacks).
func (d *Dir) inventoryPlugins() (bool, error) {
	img, err := d.ReadImage("inventory.img", Inventory)
	if err != nil || len(img.Records) == 0 {
		return false, err
	}
	b := img.Records[0]
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false, nil
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return false, nil
		}
		if num == 12 {
			v, _ := protowire.ConsumeBytes(b)
			return len(v) > 0, nil
		}
		b = b[m:]
	}
	return false, nil
}

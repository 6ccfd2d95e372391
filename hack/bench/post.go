package main

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/restore"
	"golang.org/x/sys/unix"
)

// What the CRIU hook's post-restore did, from its MNTV2_REPORT files
// (schema mntv2.post-restore-report/v1), against the syscall floor of the
// same work: hack/bench-criu.sh runs `mntv2-bench -post-floor IMAGES
// REPORT...` for each container while its images exist.

// OpTime is one kind of step of a report: how many, and their time.
type OpTime struct {
	Steps   int     `json:"steps"`
	Seconds float64 `json:"seconds"`
}

// reportDoc is the part of a post-restore report the bench reads.
type reportDoc struct {
	Schema string `json:"schema"`
	Error  string `json:"error"`
	Report *struct {
		Namespaces int `json:"namespaces"`
		Mounts     int `json:"mounts"`
		Created    int `json:"created"`
		Steps      int `json:"steps"`
		Result     struct {
			Ops      map[string]OpTime `json:"ops"`
			Syscalls int               `json:"syscalls"`
		} `json:"result"`
		ReadSeconds   float64           `json:"read_seconds"`
		PlanSeconds   float64           `json:"plan_seconds"`
		ApplySeconds  float64           `json:"apply_seconds"`
		VerifySeconds float64           `json:"verify_seconds"`
		EarlySeconds  float64           `json:"early_seconds"`
		Advanced      float64           `json:"advanced_seconds"`
		Seconds       float64           `json:"seconds"`
		Mode          string            `json:"mode"`
		Differences   []json.RawMessage `json:"differences"`
	} `json:"report"`
}

// PostRow is post-restore's best run (least read + apply) of a container
// in one mode, and the floor of its syscalls.
type PostRow struct {
	Mode        string  `json:"mode"` // reduce, strip, or "" (only verified)
	Reports     int     `json:"reports"`
	Namespaces  int     `json:"namespaces"`
	Mounts      int     `json:"mounts"`
	Created     int     `json:"created"` // mounts made (reduce mode)
	Steps       int     `json:"steps"`
	Syscalls    int     `json:"syscalls"`
	Differences int     `json:"differences"`
	ReadS       float64 `json:"read_s"` // read and match the restored namespaces; plan beside
	PlanS       float64 `json:"plan_s"`
	ApplyS      float64 `json:"apply_s"` // make, share, flags: the completion
	// EarlyS and AdvancedS: the completion's steps run before
	// post-restore (before the restored namespaces existed, and at
	// post-setup-namespaces in them).
	EarlyS    float64           `json:"early_s"`
	AdvancedS float64           `json:"advanced_s"`
	VerifyS   float64           `json:"verify_s"`
	TotalS    float64           `json:"total_s"` // PostRestore's whole time
	Ops       map[string]OpTime `json:"ops"`
	// The floor (best of 5): the same mount syscalls in a bare loop,
	// tmpfs content extracted from the same archives.
	FloorS        float64 `json:"floor_s"`
	FloorExtractS float64 `json:"floor_extract_s"`
	// FloorBesideS is the floor with the extraction on a second thread
	// beside the rest, as post-restore runs it: the larger of the two.
	FloorBesideS  float64        `json:"floor_beside_s"`
	FloorSyscalls int            `json:"floor_syscalls"` // mount syscalls, counted as the applier counts them
	ExtractCalls  int            `json:"floor_extract_syscalls"`
	Archives      int            `json:"archives"`
	Entries       int            `json:"entries"`
	Unmodeled     map[string]int `json:"unmodeled,omitempty"` // steps the floor does not make
}

// postFloor reads the reports, takes the best, and measures its floor.
func postFloor(imgDir string, reports []string) (*PostRow, error) {
	var best *PostRow
	for _, file := range reports {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		var doc reportDoc
		if err := json.Unmarshal(b, &doc); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		if doc.Schema != "mntv2.post-restore-report/v1" {
			return nil, fmt.Errorf("%s: schema %q, want mntv2.post-restore-report/v1", file, doc.Schema)
		}
		if doc.Error != "" || doc.Report == nil {
			return nil, fmt.Errorf("%s: post-restore failed: %s", file, doc.Error)
		}
		r := doc.Report
		row := &PostRow{Mode: r.Mode, Namespaces: r.Namespaces, Mounts: r.Mounts, Created: r.Created, Steps: r.Steps,
			Syscalls: r.Result.Syscalls, Differences: len(r.Differences), ReadS: r.ReadSeconds, PlanS: r.PlanSeconds,
			ApplyS: r.ApplySeconds, EarlyS: r.EarlySeconds, AdvancedS: r.Advanced, VerifyS: r.VerifySeconds, TotalS: r.Seconds, Ops: r.Result.Ops}
		if best == nil || row.ReadS+row.ApplyS < best.ReadS+best.ApplyS {
			best = row
		}
	}
	if best == nil {
		return nil, fmt.Errorf("no reports")
	}
	best.Reports = len(reports)
	if best.Mode == "" {
		return best, nil // nothing done but verify: no floor
	}
	var archives []string
	if best.Mode == "reduce" {
		var err error
		if archives, err = filledArchives(imgDir); err != nil {
			return nil, err
		}
		if got := best.Ops[string(restore.OpFillTmpfs)].Steps; got != len(archives) {
			return nil, fmt.Errorf("post-restore filled %d tmpfs, but the images have %d tmpfs with content that CRIU was not given", got, len(archives))
		}
	}
	c, unmodeled := liveCounts(best.Ops)
	best.Unmodeled = unmodeled
	for run := 0; run < 5; run++ {
		f, err := completeFloor(c, archives)
		if err != nil {
			return nil, fmt.Errorf("floor: %w", err)
		}
		if best.FloorS == 0 || f.total.Seconds() < best.FloorS {
			best.FloorS, best.FloorExtractS, best.FloorSyscalls = f.total.Seconds(), f.extract.Seconds(), f.syscalls
			best.FloorBesideS = max(f.extract, f.total-f.extract).Seconds()
			best.Archives, best.Entries, best.ExtractCalls = len(archives), f.entries, f.extractCalls
		}
	}
	return best, nil
}

// filledArchives are the tmpfs archives a reduce-mode post-restore
// extracts: those of the tmpfs superblocks none of whose mounts CRIU was
// given (restore.Reduce, as pre-restore computes it).
func filledArchives(imgDir string) ([]string, error) {
	d, err := images.Open(imgDir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	input, err := forest.ImageNamespaces(d)
	if err != nil {
		return nil, err
	}
	f, err := forest.Build(input)
	if err != nil {
		return nil, err
	}
	refs, err := d.MountRefs()
	if err != nil {
		return nil, err
	}
	if refs.KeepAll != "" {
		return nil, nil
	}
	rootNS, _, err := d.RootMountNamespace()
	if err != nil {
		return nil, err
	}
	red := restore.Reduce(f, rootNS, refs.IDs, refs.Devs)
	keptDev := map[uint32]bool{}
	var order []uint32
	seen := map[uint32]bool{}
	for _, ns := range f.Namespaces {
		_ = ns.Walk(func(m *forest.Mount) error {
			if _, ok := red.Kept[restore.MountRef{NS: ns.ID, Mount: m.ID}]; ok {
				keptDev[m.Dev] = true
			} else if m.FSType == "tmpfs" && !seen[m.Dev] {
				seen[m.Dev] = true
				order = append(order, m.Dev)
			}
			return nil
		})
	}
	var out []string
	for _, dev := range order {
		name := images.TmpfsFile(dev)
		if !keptDev[dev] && d.Exists(name) {
			out = append(out, filepath.Join(imgDir, name))
		}
	}
	return out, nil
}

// liveOps are the op counts of a live plan the floor makes.
type liveOps struct {
	openLive, newSB, external, bind, attach, setGroup, prop, setFlags, drop int
}

func liveCounts(ops map[string]OpTime) (liveOps, map[string]int) {
	var c liveOps
	unmodeled := map[string]int{}
	for op, t := range ops {
		switch restore.Op(op) {
		case restore.OpOpenLive, restore.OpOpenHost:
			c.openLive += t.Steps
		case restore.OpNewSuperblock:
			c.newSB += t.Steps
		case restore.OpFillTmpfs: // the archives
		case restore.OpOpenExternal:
			c.external += t.Steps
		case restore.OpBind:
			c.bind += t.Steps
		case restore.OpAttach:
			c.attach += t.Steps
		case restore.OpSetGroup:
			c.setGroup += t.Steps
		case restore.OpMakeShared, restore.OpMakeSlave, restore.OpMakeUnbindable:
			c.prop += t.Steps
		case restore.OpSetFlags:
			c.setFlags += t.Steps
		case restore.OpDrop:
			c.drop += t.Steps
		default:
			unmodeled[op] = t.Steps
		}
	}
	if len(unmodeled) == 0 {
		unmodeled = nil
	}
	return c, unmodeled
}

type floorRun struct {
	total, extract time.Duration
	syscalls       int // mount syscalls
	extractCalls   int
	entries        int
}

// completeFloor makes, in a bare loop on a private tree of its own, the
// syscalls of a live plan: open_tree of the restored mounts by path (here
// binds of one tmpfs, made beforehand), new tmpfs superblocks and the
// extraction of the archives into the first ones, clones of host paths
// and of the sources, move_mount of each onto a directory that exists (the
// restored root's, or one the archive made: made beforehand here), the
// set-groups from a shared member onto private clones of its superblock,
// the propagation changes and mount_setattr calls, and the closes.
func completeFloor(c liveOps, archives []string) (floorRun, error) {
	var fr floorRun
	err := inTmpfsBox("mntv2-postfloor-", func(box string) error {
		boxfd, err := unix.Open(box, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(boxfd)
		// The restored mounts: binds of one tmpfs, private.
		for i := 0; i < c.openLive; i++ {
			p := filepath.Join(box, "l"+strconv.Itoa(i))
			if err := os.Mkdir(p, 0o755); err != nil {
				return err
			}
			if i == 0 {
				err = unix.Mount("live", p, "tmpfs", 0, "")
			} else {
				err = unix.Mount(filepath.Join(box, "l0"), p, "", unix.MS_BIND, "")
			}
			if err != nil {
				return err
			}
		}
		for i := 0; i < c.attach; i++ {
			if err := unix.Mkdirat(boxfd, "a"+strconv.Itoa(i), 0o755); err != nil {
				return err
			}
		}
		old := unix.Umask(0) // entries are made with their archived mode
		defer unix.Umask(old)
		var fds []int
		defer func() {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}()
		n := 0 // syscalls
		start := time.Now()
		lives := make([]int, 0, c.openLive)
		for i := 0; i < c.openLive; i++ {
			fd, err := unix.OpenTree(boxfd, "l"+strconv.Itoa(i), unix.OPEN_TREE_CLOEXEC)
			n++
			if err != nil {
				return fmt.Errorf("open_tree: %w", err)
			}
			lives, fds = append(lives, fd), append(fds, fd)
		}
		var srcs []int
		for i := 0; i < c.newSB; i++ {
			fs, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
			if err != nil {
				return err
			}
			if err := unix.FsconfigCreate(fs); err != nil {
				return err
			}
			m, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, 0)
			unix.Close(fs)
			n += 4
			if err != nil {
				return err
			}
			srcs, fds = append(srcs, m), append(fds, m)
		}
		if len(archives) > len(srcs) {
			return fmt.Errorf("%d archives for %d new superblocks", len(archives), len(srcs))
		}
		t := time.Now()
		for i, a := range archives {
			e, s, err := extractFloor(a, srcs[i])
			if err != nil {
				return fmt.Errorf("%s: %w", a, err)
			}
			fr.entries, fr.extractCalls = fr.entries+e, fr.extractCalls+s
		}
		fr.extract = time.Since(t)
		var attachable []int
		for i := 0; i < c.external; i++ {
			fd, err := unix.OpenTree(unix.AT_FDCWD, box, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
			n++
			if err != nil {
				return fmt.Errorf("open_tree(clone) of a host path: %w", err)
			}
			attachable, fds = append(attachable, fd), append(fds, fd)
		}
		// What the binds clone: a new superblock (not the extracted one,
		// when there are two), or a restored mount when the set-groups
		// span the restored mounts too (the new binds of a superblock
		// CRIU restored some mounts of are cloned from one of them).
		from, withLives := -1, c.setGroup >= c.bind && len(lives) > 0
		switch {
		case withLives || len(srcs) == 0 && len(lives) > 0:
			from = lives[0]
		case len(srcs) > 0:
			from = srcs[len(srcs)-1]
		}
		var binds []int
		for i := 0; i < c.bind; i++ {
			fd, err := unix.OpenTree(from, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
			n++
			if err != nil {
				return fmt.Errorf("open_tree(clone): %w", err)
			}
			binds, fds = append(binds, fd), append(fds, fd)
		}
		attachable = append(append(binds, srcs...), attachable...)
		if c.attach > len(attachable) {
			return fmt.Errorf("%d attaches of %d detached mounts", c.attach, len(attachable))
		}
		for i := 0; i < c.attach; i++ {
			if err := unix.MoveMount(attachable[i], "", boxfd, "a"+strconv.Itoa(i), unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
				return fmt.Errorf("move_mount: %w", err)
			}
			n++
		}
		// Sharing: one member made shared, its group set on the others
		// (clones of its superblock, private), then the remaining
		// propagation changes on other mounts.
		group, ofBinds := binds, true
		if withLives {
			group, ofBinds = append(append([]int(nil), lives...), binds...), false
		}
		prop := c.prop
		if c.setGroup > 0 {
			if len(group) <= c.setGroup {
				return fmt.Errorf("%d set-groups but %d mounts of one superblock", c.setGroup, len(group))
			}
			if err := unix.Mount("", procFd(group[0]), "", unix.MS_SHARED, ""); err != nil {
				return fmt.Errorf("make-shared: %w", err)
			}
			n, prop = n+1, prop-1
			for i := 1; i <= c.setGroup; i++ {
				if err := unix.MoveMount(group[0], "", group[i], "",
					unix.MOVE_MOUNT_SET_GROUP|unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
					return fmt.Errorf("set-group: %w", err)
				}
				n++
			}
		}
		others := attachable[:c.attach]
		if c.setGroup > 0 && ofBinds {
			others = others[min(c.setGroup+1, len(others)):]
		}
		if len(others) == 0 {
			others = lives
		}
		for i := 0; i < prop && len(others) > 0; i++ {
			if err := unix.Mount("", procFd(others[i%len(others)]), "", unix.MS_SHARED, ""); err != nil {
				return fmt.Errorf("make-shared: %w", err)
			}
			n++
		}
		attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID}
		for i := 0; i < c.setFlags && c.attach > 0; i++ {
			if err := unix.MountSetattr(attachable[i%c.attach], "", unix.AT_EMPTY_PATH, attr); err != nil {
				return fmt.Errorf("mount_setattr: %w", err)
			}
			n++
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
		fds = nil
		fr.total, fr.syscalls = time.Since(start), n
		return nil
	})
	return fr, err
}

// extractFloor makes the entries of a tmpfs archive below rootfd with the
// fewest syscalls: each made with its mode (umask 0), chowned only when
// not owned by this process, its times set (a directory's once its
// entries exist). It returns the entries and syscalls made.
func extractFloor(file string, rootfd int) (entries, calls int, err error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return 0, 0, err
	}
	tr := tar.NewReader(zr)
	uid, gid := os.Geteuid(), os.Getegid()
	dirfd, dirName := rootfd, ""
	defer func() {
		if dirfd != rootfd {
			unix.Close(dirfd)
		}
	}()
	type dirTime struct {
		name string
		ts   []unix.Timespec
	}
	var dirs []dirTime
	buf := make([]byte, 128<<10)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return entries, calls, err
		}
		entries++
		name := path.Clean(hdr.Name)
		mode := uint32(hdr.Mode) & 0o7777
		ts := []unix.Timespec{unix.NsecToTimespec(hdr.AccessTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
		if hdr.AccessTime.IsZero() {
			ts[0] = ts[1]
		}
		if name == "." {
			if hdr.Uid != uid || hdr.Gid != gid {
				calls++
				if err := unix.Fchownat(rootfd, "", hdr.Uid, hdr.Gid, unix.AT_EMPTY_PATH); err != nil {
					return entries, calls, err
				}
			}
			calls++
			if err := unix.Fchmodat(unix.AT_FDCWD, procFd(rootfd), mode, 0); err != nil {
				return entries, calls, err
			}
			continue
		}
		dir, base := path.Split(name)
		dir = strings.TrimSuffix(dir, "/")
		if dir != dirName {
			if dirfd != rootfd {
				unix.Close(dirfd)
				calls++
			}
			dirfd, dirName = rootfd, ""
			if dir != "" {
				fd, err := unix.Openat(rootfd, dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
				calls++
				if err != nil {
					return entries, calls, err
				}
				dirfd, dirName = fd, dir
			}
		}
		calls++
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = unix.Mkdirat(dirfd, base, mode)
		case tar.TypeReg, tar.TypeGNUSparse:
			var fd int
			if fd, err = unix.Openat(dirfd, base, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, mode); err == nil {
				for err == nil {
					var k int
					k, err = tr.Read(buf)
					if k > 0 {
						calls++
						if _, werr := unix.Write(fd, buf[:k]); werr != nil {
							err = werr
						}
					}
				}
				if err == io.EOF {
					err = nil
				}
				unix.Close(fd)
				calls++
			}
		case tar.TypeSymlink:
			err = unix.Symlinkat(hdr.Linkname, dirfd, base)
		case tar.TypeLink:
			err = unix.Linkat(rootfd, path.Clean(hdr.Linkname), dirfd, base, 0)
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
			err = unix.Mknodat(dirfd, base, kind|mode, int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))))
		default:
			return entries, calls, fmt.Errorf("entry %q: type %q", hdr.Name, hdr.Typeflag)
		}
		if err != nil {
			return entries, calls, fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		if hdr.Typeflag == tar.TypeLink {
			continue
		}
		if hdr.Uid != uid || hdr.Gid != gid {
			calls++
			if err := unix.Fchownat(dirfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return entries, calls, err
			}
			if mode&^0o777 != 0 && hdr.Typeflag != tar.TypeSymlink { // chown clears setuid and setgid
				calls++
				if err := unix.Fchmodat(dirfd, base, mode, 0); err != nil {
					return entries, calls, err
				}
			}
		}
		if hdr.Typeflag == tar.TypeDir {
			dirs = append(dirs, dirTime{name, ts})
			continue
		}
		calls++
		if err := unix.UtimesNanoAt(dirfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return entries, calls, err
		}
	}
	for _, d := range dirs {
		calls++
		if err := unix.UtimesNanoAt(rootfd, d.name, d.ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return entries, calls, err
		}
	}
	return entries, calls, nil
}

// NoopRow is the cost of one no-op action of the hook (CRIU runs the
// action script for every action: pre-restore and post-restore do the
// work, the others return at once), against /bin/true, runs alternated.
type NoopRow struct {
	Action  string  `json:"action"`
	Runs    int     `json:"runs"`
	MedianS float64 `json:"median_s"`
	MinS    float64 `json:"min_s"`
	MaxS    float64 `json:"max_s"`
	TrueS   float64 `json:"true_median_s"`
}

// noop times runs of exe as the hook of a no-op action, and of /bin/true,
// each from fork to reaping.
func noop(exe string, runs int) (*NoopRow, error) {
	env := append(os.Environ(), "CRTOOLS_SCRIPT_ACTION=network-lock")
	one := func(path string) (time.Duration, error) {
		cmd := exec.Command(path)
		cmd.Env = env
		t := time.Now()
		if err := cmd.Run(); err != nil {
			return 0, fmt.Errorf("%s: %w", path, err)
		}
		return time.Since(t), nil
	}
	var a, b []float64
	for i := -5; i < runs; i++ { // five warm-up runs
		ta, err := one(exe)
		if err != nil {
			return nil, err
		}
		tb, err := one("/bin/true")
		if err != nil {
			return nil, err
		}
		if i >= 0 {
			a, b = append(a, ta.Seconds()), append(b, tb.Seconds())
		}
	}
	sort.Float64s(a)
	sort.Float64s(b)
	return &NoopRow{Action: "network-lock", Runs: runs, MedianS: a[len(a)/2], MinS: a[0], MaxS: a[len(a)-1], TrueS: b[len(b)/2]}, nil
}

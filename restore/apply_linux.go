package restore

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"golang.org/x/sys/unix"
)

// Options say where and how a plan is applied.
type Options struct {
	// Root is the directory every namespace's root mount is a bind of.
	Root string
	// PinDir receives mntns-<ID>: an nsfs bind that keeps each restored
	// namespace alive.
	PinDir string
	// Images is the images directory the plan was made from; tmpfs content
	// is read from it.
	Images *images.Dir
	// TmpfsLimit caps the bytes extracted into a tmpfs that has no size=
	// option (default 1 GiB).
	TmpfsLimit int64
	// Log receives a line per phase (default: slog.Default()).
	Log *slog.Logger

	// Live names the restored namespaces of a live plan (NewLivePlan), by
	// image namespace id.
	Live map[uint32]*LiveNamespace

	// Stop, when closed, makes Apply stop before its next step and roll
	// back (SIGTERM of mntv2 restore).
	Stop <-chan struct{}
	// Hooks are for tests and robustness runs only.
	Hooks Hooks

	// MountIDs fills NamespaceResult.Mounts with the new mount ids (a
	// statx per mount).
	MountIDs bool

	// UserNS is a user namespace (an nsfs path): the namespaces the
	// images say a container's user namespace owned are made owned by it
	// (Plan.Owners; its maps must be theirs).
	UserNS string

	// Check, when set, runs after the last step: an error rolls the
	// restore back as a failed step does.
	Check func() error
}

// Result says what a restore made.
type Result struct {
	Namespaces []NamespaceResult `json:"namespaces"`
	Helpers    int               `json:"helpers"`
	Phases     []PhaseTime       `json:"phases"`
	// Ops is the time spent in each kind of step.
	Ops      map[Op]*PhaseTime `json:"ops,omitempty"`
	Syscalls int               `json:"syscalls"`
}

// NamespaceResult is one restored namespace.
type NamespaceResult struct {
	ID  uint32 `json:"id"`
	Pin string `json:"pin"`
	// Count is the number of mounts restored in the namespace.
	Count int `json:"count"`
	// Mounts maps image mount ids to the new mount ids (Options.MountIDs).
	Mounts map[uint32]uint64 `json:"mounts,omitempty"`
}

// PhaseTime is the time one phase of the restore took.
type PhaseTime struct {
	Phase   string  `json:"phase"`
	Steps   int     `json:"steps"`
	Seconds float64 `json:"seconds"`
}

// Phase names the part of a restore a step belongs to.
func (p *Plan) Phase(s Step) string {
	switch s.Op {
	case OpCreateNamespace, OpNewSuperblock, OpFillTmpfs, OpOpenExternal, OpSetIDMap:
		return "create"
	case OpBind:
		if p.Handles[s.Handle].Helper {
			return "sharing"
		}
		return "create"
	case OpAttach:
		return "assemble"
	case OpSetGroup, OpMakeSlave, OpMakeShared:
		return "sharing"
	case OpMakeUnbindable, OpSetFlags:
		return "flags"
	case OpOpenLive, OpUnstack, OpOpenHost:
		return "open"
	}
	return "finish"
}

// PinName is the pin file of namespace id in a pin dir.
func PinName(id uint32) string { return "mntns-" + strconv.FormatUint(uint64(id), 10) }

// applier holds the state of one Apply: an fd per handle, a worker per
// namespace, and what must be undone on failure.
type applier struct {
	plan     *Plan
	opt      Options
	fds      []int
	workers  map[uint32]*worker
	nsFds    map[uint32]int
	baseNS   int
	rootLock int
	pinDir   int
	created  []created // persistent mountpoints made, in order
	attached map[uint32][]Handle
	pins     []string
	calls    int
	live     map[uint32]*liveState

	// What the plan says of each handle's mount (indexHandles): whether
	// its root is a directory (else kindUnknown until an fstat), the
	// new-superblock handle it is a bind of and its root in it, and a new
	// superblock's options.
	kind      []kind
	sbOf      []Handle
	rootIn    []string
	sbOptions map[Handle]string // a new superblock's options (size= for a fill)
	// A directory of a mount that attaches resolve in (see dirOf).
	dirCache struct {
		parent Handle
		dir    string
		fd     int
	}
	// The extraction of tmpfs content into a new superblock (see fill), by
	// its handle.
	fillOf  []*fill
	fills   []*fill
	premade map[Handle][]string // mountpointsIn
	step    int                 // the step running
	done    []bool              // steps that ran early (StartEarly), skipped
	// The restorer's mounts by id (openHost), read once.
	hostTree map[uint64]forest.Mount
	// Deleted roots made again (makeDeleted), until removed.
	deleted []*remade
	// User namespaces: Options.UserNS (-1 if none), and those made for
	// idmaps, by their maps.
	userNS  int
	idmapNS map[string]int
}

type kind int8

const (
	kindUnknown kind = iota
	kindDir
	kindOther
)

// Apply restores plan. It runs on the calling goroutine's thread (locked for
// the duration), whose mount namespace holds the pins. On failure nothing is
// left: no mounts, pins, created mountpoints, fds or threads; the error is a
// *StepError naming the step, the mount, the syscall and the errno.
func Apply(plan *Plan, opt Options) (res *Result, err error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	a := newApplier(plan, opt)
	defer func() {
		if err != nil {
			a.rollback()
		}
		a.release()
	}()
	if err := a.prepare(); err != nil {
		return nil, err
	}
	return a.run(nil, &Result{Helpers: plan.Helpers})
}

func newApplier(plan *Plan, opt Options) *applier {
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.TmpfsLimit == 0 {
		opt.TmpfsLimit = 1 << 30
	}
	a := &applier{plan: plan, opt: opt, fds: make([]int, len(plan.Handles)), fillOf: make([]*fill, len(plan.Handles)),
		workers: map[uint32]*worker{}, nsFds: map[uint32]int{}, attached: map[uint32][]Handle{},
		baseNS: -1, pinDir: -1, rootLock: -1, userNS: -1, idmapNS: map[string]int{}}
	a.dirCache.fd = -1
	for i := range a.fds {
		a.fds[i] = -1
	}
	a.indexHandles()
	return a
}

// run runs the plan's steps but those done holds (see StartEarly), then
// checks, and says what the restore made in res.
func (a *applier) run(done []bool, res *Result) (*Result, error) {
	plan := a.plan
	// Steps run in batches: a run of consecutive steps on the same thread
	// (this one, or a namespace's worker) is handed over once.
	for i := 0; i < len(plan.Steps); {
		if done != nil && done[i] {
			i++
			continue
		}
		// Steps done early do not end a batch: they are skipped in it.
		j := i
		where := a.executor(plan.Steps[i])
		for j < len(plan.Steps) && (done != nil && done[j] || a.executor(plan.Steps[j]) == where) {
			j++
		}
		a.done = done
		if err := a.runBatch(where, i, j, res); err != nil {
			return nil, err
		}
		i = j
	}
	if err := a.waitFills(); err != nil {
		return nil, err
	}
	if a.opt.Check != nil {
		// Still able to roll back what this restore made.
		if err := a.opt.Check(); err != nil {
			return nil, err
		}
	}
	for _, fl := range a.fills {
		res.Ops[OpFillTmpfs].Seconds += fl.took.Seconds()
	}
	res.Syscalls = a.calls
	for _, id := range plan.Namespaces {
		nr := NamespaceResult{ID: id}
		if a.opt.Live == nil {
			nr.Pin = filepath.Join(a.opt.PinDir, PinName(id))
		}
		if a.opt.MountIDs {
			nr.Mounts = map[uint32]uint64{}
		}
		for h, info := range plan.Handles {
			if info.NS != id || info.Mount == 0 || a.fds[h] < 0 {
				continue
			}
			nr.Count++
			var stx unix.Statx_t
			if a.opt.MountIDs && unix.Statx(a.fds[h], "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &stx) == nil {
				nr.Mounts[info.Mount] = stx.Mnt_id
			}
		}
		res.Namespaces = append(res.Namespaces, nr)
	}
	return res, nil
}

// prepare opens the base namespace and the pin dir and starts the workers.
func (a *applier) prepare() error {
	fail := func(what string, err error) error {
		return &StepError{Index: -1, Step: step("prepare"), What: what, Err: err}
	}
	if err := a.prepareBase(); err != nil {
		return fail("this mount namespace", err)
	}
	if a.opt.Live != nil {
		if err := a.startLive(); err != nil {
			return fail("restored namespaces", err)
		}
		return nil
	}
	userNS, err := openUserNS(a.plan, a.opt)
	if err != nil {
		return fail("--userns", err)
	}
	a.userNS = userNS
	if a.plan.Len() > 0 {
		// One restore at a time per root: a rollback removes the
		// mountpoints it made in the root, and removing a mountpoint
		// detaches what another namespace has mounted on it.
		rfd, err := unix.Open(a.opt.Root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fail("restore root "+a.opt.Root, sysErr("open", err))
		}
		a.rootLock = rfd
		if err := unix.Flock(rfd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			return fail("restore root "+a.opt.Root, fmt.Errorf("in use by another mntv2 restore (flock: %w)", err))
		}
		if err := os.MkdirAll(a.opt.PinDir, 0o700); err != nil {
			return fail("pin dir "+a.opt.PinDir, err)
		}
		pd, err := unix.Open(a.opt.PinDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fail("pin dir "+a.opt.PinDir, sysErr("open", err))
		}
		a.pinDir = pd
	}
	for _, id := range a.plan.Namespaces {
		w, err := startWorker(id, a.baseNS)
		if err != nil {
			return fail(fmt.Sprintf("namespace %d", id), err)
		}
		a.workers[id] = w
	}
	return nil
}

// prepareBase opens the base namespace (this thread's) and grows the fd
// table.
func (a *applier) prepareBase() error {
	fd, err := unix.Open("/proc/thread-self/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return sysErr("open", err)
	}
	a.baseNS = fd
	growFdTable(fd, len(a.plan.Handles)+len(a.plan.Namespaces)+fdSlack)
	return nil
}

// fdSlack is what a restore needs beyond a fd per handle and namespace:
// stdio, the runtime's, the images directory, extractions, the pin dir.
const fdSlack = 32

// FdsFor is the fd table a restore of f needs, at most (a fd per mount,
// per superblock source and per namespace).
func FdsFor(f *forest.Forest) int { return 2*f.Len() + len(f.Namespaces) + fdSlack }

// GrowFdTable makes this process's fd table hold n fds, waiting for one
// RCU grace period (see growFdTable), unless the table a process starts
// with (64) holds them. Callers that know a restore is coming run it in a
// goroutine while they read and plan, so Apply finds the table grown.
func GrowFdTable(n int) {
	if n <= 64 {
		return
	}
	// Any open fd will do to dup from; fd 0 may be closed.
	fd, err := unix.Open("/", unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	growFdTable(fd, n)
	unix.Close(fd)
}

// growFdTable makes the fd table hold n fds at once. The kernel grows it
// by doubling, and in a multi-threaded process each growth waits for an
// RCU grace period (fs/file.c expand_fdtable; 1.5 to 20 ms on the test
// machine): a dozen of them cost more than a thousand mounts. One dup to
// fd n-1 or above grows it once; a restore that fits the first 64 fds
// waits for none. Beyond RLIMIT_NOFILE the dup fails, which is harmless.
func growFdTable(fd, n int) {
	if n <= 64 {
		return // the table every process starts with
	}
	// F_DUPFD takes the lowest free fd from n-1 up: it never replaces one
	// in use, as dup3 onto n-1 would.
	if nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, n-1); err == nil {
		unix.Close(nfd)
	}
}

// Len is the number of namespaces a plan restores.
func (p *Plan) Len() int { return len(p.Namespaces) }

// executor is the namespace whose worker runs a step, 0 for this thread.
// Attaching and mount_setattr work only inside the namespace; so does
// cloning a mount of it (a bind of the restore root). Everything else works
// by fd from here: new superblocks, clones of detached or host mounts,
// MOVE_MOUNT_SET_GROUP and propagation changes.
func (a *applier) executor(s Step) uint32 {
	switch s.Op {
	case OpCreateNamespace, OpAttach, OpSetFlags, OpOpenLive, OpUnstack:
		return s.NS
	case OpBind:
		if info := a.plan.Handles[s.From]; info.Root || info.Live && !info.Helper {
			return info.NS
		}
	case OpNewSuperblock:
		if s.InNS {
			return s.NS
		}
	}
	return 0
}

func (a *applier) runBatch(where uint32, from, to int, res *Result) error {
	run := func() error {
		// Time is taken per run of steps of one kind and phase, not per
		// step: on 40,000 steps per-step clocks and map updates cost
		// milliseconds.
		for i := from; i < to; {
			if a.done != nil && a.done[i] {
				i++
				continue
			}
			op, phase := a.plan.Steps[i].Op, a.plan.Phase(a.plan.Steps[i])
			start := time.Now()
			j := i
			for ; j < to && a.plan.Steps[j].Op == op && (j == i || a.plan.Phase(a.plan.Steps[j]) == phase) && (a.done == nil || !a.done[j]); j++ {
				if a.opt.Stop != nil {
					select {
					case <-a.opt.Stop:
						return a.stepError(j, ErrStopped)
					default:
					}
				}
				if a.opt.Hooks.BeforeStep != nil {
					a.opt.Hooks.BeforeStep(a.plan, a.plan.Steps[j])
				}
				a.step = j
				if err := a.do(a.plan.Steps[j]); err != nil {
					return a.stepError(j, err)
				}
			}
			res.account(op, phase, j-i, time.Since(start))
			i = j
		}
		return nil
	}
	if where == 0 {
		return run()
	}
	return a.workers[where].run(run)
}

// account adds n steps of op in phase that took d.
func (r *Result) account(op Op, phase string, n int, d time.Duration) {
	r.addTime(phase, n, d)
	if r.Ops == nil {
		r.Ops = map[Op]*PhaseTime{}
	}
	if r.Ops[op] == nil {
		r.Ops[op] = &PhaseTime{Phase: string(op)}
	}
	r.Ops[op].Steps += n
	r.Ops[op].Seconds += d.Seconds()
}

func (r *Result) addTime(phase string, n int, d time.Duration) {
	if k := len(r.Phases); k > 0 && r.Phases[k-1].Phase == phase {
		r.Phases[k-1].Steps += n
		r.Phases[k-1].Seconds += d.Seconds()
		return
	}
	for i := range r.Phases {
		if r.Phases[i].Phase == phase {
			r.Phases[i].Steps += n
			r.Phases[i].Seconds += d.Seconds()
			return
		}
	}
	r.Phases = append(r.Phases, PhaseTime{Phase: phase, Steps: n, Seconds: d.Seconds()})
}

func (a *applier) stepError(i int, err error) error {
	if se := (*StepError)(nil); errors.As(err, &se) {
		return se // already named (a fill's, met by a later step)
	}
	s := a.plan.Steps[i]
	se := &StepError{Index: i, Step: s, Err: err}
	var sys *sysError
	if errors.As(err, &sys) {
		se.Syscall = sys.call
		if err == error(sys) {
			se.Err = sys.err
		} else {
			se.inErr = true // the context around it says on what
		}
	}
	h := s.Handle
	switch {
	case s.Mount != 0:
		se.What = fmt.Sprintf("namespace %d, mount %d (%s)", s.NS, s.Mount, a.plan.Handles[h].What)
	case h != NoHandle:
		se.What = a.plan.Handles[h].What
	default:
		se.What = fmt.Sprintf("namespace %d", s.NS)
	}
	return se
}

// sys counts a mount syscall and fails it on purpose when asked to.
func (a *applier) sys(call string, fn func() error) error {
	a.calls++
	if a.calls == a.opt.Hooks.FailSyscall {
		return sysErr(call, ErrInjected)
	}
	return sysErr(call, fn())
}

// sysFd is sys for a syscall that returns an fd.
func (a *applier) sysFd(call string, fn func() (int, error)) (int, error) {
	fd := -1
	err := a.sys(call, func() error {
		var err error
		fd, err = fn()
		return err
	})
	return fd, err
}

func procFd(fd int) string { return "/proc/thread-self/fd/" + strconv.Itoa(fd) }

// do runs one step.
func (a *applier) do(s Step) error {
	switch s.Op {
	case OpCreateNamespace:
		return a.createNamespace(s)
	case OpNewSuperblock:
		return a.newSuperblock(s)
	case OpFillTmpfs:
		return a.fillTmpfs(s)
	case OpOpenExternal:
		if s.Deleted {
			if err := a.makeDeleted(s); err != nil {
				return err
			}
		}
		fd, err := a.sysFd("open_tree", func() (int, error) {
			return unix.OpenTree(unix.AT_FDCWD, s.Path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		})
		if err != nil {
			return fmt.Errorf("host path %s: %w", s.Path, err)
		}
		a.fds[s.Handle] = fd
		// A clone of a shared host mount is its peer: private first.
		return a.sys("mount(MS_PRIVATE)", func() error { return unix.Mount("", procFd(fd), "", unix.MS_PRIVATE, "") })
	case OpBind:
		return a.bind(s)
	case OpAttach:
		return a.attach(s)
	case OpSetGroup:
		return a.sys("move_mount(MOVE_MOUNT_SET_GROUP)", func() error {
			return unix.MoveMount(a.fds[s.From], "", a.fds[s.Handle], "",
				unix.MOVE_MOUNT_SET_GROUP|unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
		})
	case OpMakeSlave:
		return a.propagation(s, "mount(MS_SLAVE)", unix.MS_SLAVE)
	case OpMakeShared:
		return a.propagation(s, "mount(MS_SHARED)", unix.MS_SHARED)
	case OpMakeUnbindable:
		return a.propagation(s, "mount(MS_UNBINDABLE)", unix.MS_UNBINDABLE)
	case OpSetFlags:
		attr := mountAttr(s.Flags)
		err := a.sys("mount_setattr", func() error {
			return unix.MountSetattr(a.fds[s.Handle], "", unix.AT_EMPTY_PATH, attr)
		})
		if err != nil && a.plan.Owners[s.NS] != nil {
			return lockedFlags(s, err)
		}
		return err
	case OpSetIDMap:
		return a.setIDMap(s)
	case OpRemoveDeleted:
		return a.removeDeleted(s)
	case OpDrop:
		if err := a.waitDone(a.fillFor(s.Handle)); err != nil {
			return err
		}
		// Closing the last fd of a detached mount unmounts it.
		err := unix.Close(a.fds[s.Handle])
		a.fds[s.Handle] = -1
		return sysErr("close", err)
	case OpPin:
		if err := a.waitFills(); err != nil {
			return err
		}
		return a.pin(s)
	case OpOpenLive:
		return a.openLive(s)
	case OpUnstack:
		return a.unstack(s)
	case OpOpenHost:
		return a.openHost(s)
	}
	return fmt.Errorf("unknown step %q", s.Op)
}

func (a *applier) propagation(s Step, call string, flag uintptr) error {
	return a.sys(call, func() error { return unix.Mount("", procFd(a.fds[s.Handle]), "", flag, "") })
}

// createNamespace runs on the namespace's worker: a new mount namespace,
// all private, whose root becomes a private bind of the restore root, or
// (s.From) the detached mount made for it.
func (a *applier) createNamespace(s Step) error {
	var nsfd int
	var err error
	if s.UserNS {
		nsfd, err = a.ownedNamespace()
	} else {
		nsfd, err = a.unshareNewer()
	}
	if err != nil {
		return err
	}
	a.nsFds[s.NS] = nsfd
	if err := a.sys("mount(MS_REC|MS_PRIVATE)", func() error { return unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "") }); err != nil {
		return err
	}
	var root int
	if s.From != NoHandle {
		// Its fd stays the handle's until it is replaced below.
		root = a.fds[s.From]
	} else {
		root, err = a.sysFd("open_tree", func() (int, error) {
			return unix.OpenTree(unix.AT_FDCWD, a.opt.Root, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		})
		if err != nil {
			return fmt.Errorf("restore root %s: %w", a.opt.Root, err)
		}
		defer unix.Close(root)
	}
	// The new root is stacked on the restore root's path in this copy of
	// the namespace it was made from, entered, and pivoted to; the old
	// tree is detached.
	if err := a.sys("move_mount", func() error {
		return unix.MoveMount(root, "", unix.AT_FDCWD, a.opt.Root, unix.MOVE_MOUNT_F_EMPTY_PATH)
	}); err != nil {
		return err
	}
	if err := unix.Chdir(a.opt.Root); err != nil {
		return sysErr("chdir", err)
	}
	if err := a.sys("pivot_root", func() error { return unix.PivotRoot(".", ".") }); err != nil {
		return err
	}
	if err := a.sys("umount2(MNT_DETACH)", func() error { return unix.Unmount(".", unix.MNT_DETACH) }); err != nil {
		return err
	}
	if err := unix.Chdir("/"); err != nil {
		return sysErr("chdir", err)
	}
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return sysErr("open(/)", err)
	}
	if old := a.fds[s.Handle]; old >= 0 {
		unix.Close(old)
	}
	a.fds[s.Handle] = fd
	return nil
}

// unshareNewer makes this thread's new mount namespace, one whose id is
// above the base namespace's: the kernel binds an nsfs file of a mount
// namespace (the pin) only into an older namespace (fs/namespace.c
// mnt_ns_loop compares the ids). Linux 6.18 hands out namespace ids from
// per-CPU batches, so a namespace made later on another CPU can get a
// smaller id; then unshare again on each CPU in turn. This thread dies with
// its worker, so its affinity does not matter afterwards.
func (a *applier) unshareNewer() (int, error) {
	base, baseErr := mntNamespaceID(a.baseNS)
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return -1, sysErr("sched_getaffinity", err)
	}
	var cpus []int
	for cpu := 0; cpu < 1024; cpu++ {
		if set.IsSet(cpu) {
			cpus = append(cpus, cpu)
		}
	}
	for try := 0; ; try++ {
		// Retries are not counted: the count of mount syscalls stays the
		// same from run to run (fault injection relies on it).
		unshare := func() error { return unix.Unshare(unix.CLONE_NEWNS) }
		var err error
		if try == 0 {
			err = a.sys("unshare(CLONE_NEWNS)", unshare)
		} else {
			err = sysErr("unshare(CLONE_NEWNS)", unshare())
		}
		if err != nil {
			return -1, err
		}
		nsfd, err := unix.Open("/proc/thread-self/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, sysErr("open(/proc/thread-self/ns/mnt)", err)
		}
		id, err := mntNamespaceID(nsfd)
		if baseErr != nil || err != nil || id > base {
			return nsfd, nil // no ids (before 6.10): they were monotonic
		}
		unix.Close(nsfd)
		if try >= 4*len(cpus) {
			return -1, fmt.Errorf("every new mount namespace got an id below this one's (%d): cannot pin it", base)
		}
		var one unix.CPUSet
		one.Set(cpus[try%len(cpus)])
		_ = unix.SchedSetaffinity(0, &one)
	}
}

// mntNamespaceID is the id of the mount namespace of an nsfs fd
// (ioctl NS_GET_MNTNS_ID, Linux 6.10).
func mntNamespaceID(nsfd int) (uint64, error) {
	const nsGetMntnsID = 0x8008b705 // _IOR(0xb7, 0x5, __u64)
	var id uint64
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(nsfd), nsGetMntnsID, uintptr(unsafe.Pointer(&id))); e != 0 {
		return 0, e
	}
	return id, nil
}

// newSuperblock makes a detached mount of a new filesystem instance.
func (a *applier) newSuperblock(s Step) error {
	if s.InNS {
		// Its options name paths in the namespace (an overlay's
		// layers): every tmpfs content must be in place.
		if err := a.waitFills(); err != nil {
			return err
		}
	}
	fsfd, err := a.sysFd("fsopen", func() (int, error) { return unix.Fsopen(s.FSType, unix.FSOPEN_CLOEXEC) })
	if err != nil {
		return fmt.Errorf("%s: %w", s.FSType, err)
	}
	defer unix.Close(fsfd)
	if s.Source != "" {
		if err := a.sys("fsconfig(source)", func() error { return unix.FsconfigSetString(fsfd, "source", s.Source) }); err != nil {
			return err
		}
	}
	for _, o := range strings.Split(s.Options, ",") {
		if o == "" {
			continue
		}
		key, val, hasVal := strings.Cut(o, "=")
		err := a.sys("fsconfig("+key+")", func() error {
			if hasVal {
				return unix.FsconfigSetString(fsfd, key, val)
			}
			return unix.FsconfigSetFlag(fsfd, key)
		})
		if err != nil {
			return fmt.Errorf("option %q: %w", o, err)
		}
	}
	if err := a.sys("fsconfig(FSCONFIG_CMD_CREATE)", func() error { return unix.FsconfigCreate(fsfd) }); err != nil {
		return err
	}
	fd, err := a.sysFd("fsmount", func() (int, error) { return unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0) })
	if err != nil {
		return err
	}
	a.fds[s.Handle] = fd
	return nil
}

// fillTmpfs starts extracting the tmpfs content (see fill).
func (a *applier) fillTmpfs(s Step) error {
	if a.opt.Images == nil {
		return errors.New("no images directory to read tmpfs content from")
	}
	name := images.TmpfsFile(s.Dev)
	f, err := a.opt.Images.OpenFile(name)
	if err != nil {
		return err
	}
	limit := a.opt.TmpfsLimit
	if l := tmpfsSizeLimit(a.sbOptions[s.Handle]); l > 0 {
		limit = l
	}
	fl := startFill(a.step, name, f, a.fds[s.Handle], limit, a.mountpointsIn(s.Handle), s.IDMap)
	a.fills = append(a.fills, fl)
	a.fillOf[s.Handle] = fl
	return nil
}

// bind clones the mount at a path inside another handle's mount. The path
// is resolved below that mount's root without symlinks (the content may
// come from the images) before open_tree clones it.
func (a *applier) bind(s Step) error {
	if s.Path != "" {
		if err := a.waitCreated(a.fillFor(s.From)); err != nil {
			return err
		}
	}
	if s.Deleted {
		if err := a.makeDeleted(s); err != nil {
			return err
		}
	}
	from := a.fds[s.From]
	if info := a.plan.Handles[s.From]; s.Path != "" && !strings.Contains(s.Path, "/") &&
		info.Mount == 0 && !info.Root && !info.Live && !info.Helper {
		// A subdirectory of a new superblock's own detached mount: one
		// component, looked up inside it without following a final
		// symlink, needs no separate checked open.
		fd, err := a.sysFd("open_tree", func() (int, error) {
			return unix.OpenTree(from, s.Path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_SYMLINK_NOFOLLOW)
		})
		if errors.Is(err, unix.ENOENT) && a.socketRoot(s) {
			fd, err = a.sysFd("open_tree", func() (int, error) {
				return unix.OpenTree(from, s.Path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_SYMLINK_NOFOLLOW)
			})
		}
		if err != nil {
			return fmt.Errorf("%s inside %s: %w", s.Path, info.What, err)
		}
		a.fds[s.Handle] = fd
		return nil
	}
	if s.Path != "" {
		fd, err := openInside(from, s.Path, unix.O_PATH, 0)
		if errors.Is(err, unix.EXDEV) && a.plan.Handles[s.From].Live {
			// The path is covered by a mount in the restored tree: it is
			// found in a clone of the source mount alone, which has no
			// mounts on it (and must stay open until it is cloned from:
			// closing it dissolves it).
			var bare int
			bare, fd, err = a.inBareClone(from, s.Path)
			if bare >= 0 {
				defer unix.Close(bare)
			}
		}
		if errors.Is(err, unix.ENOENT) && a.socketRoot(s) {
			fd, err = openInside(from, s.Path, unix.O_PATH, 0)
		}
		if err != nil {
			return sysErr("openat2", fmt.Errorf("%s inside %s: %w", s.Path, a.plan.Handles[s.From].What, err))
		}
		defer unix.Close(fd)
		from = fd
	}
	fd, err := a.sysFd("open_tree", func() (int, error) {
		return unix.OpenTree(from, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	})
	if err != nil {
		return err
	}
	a.fds[s.Handle] = fd
	return nil
}

// socketRoot makes, for a bind whose root is missing from a tmpfs mntv2
// filled from its archive, a socket inode there and says so: GNU tar
// archives every kind of file but sockets ("socket ignored"), so that is
// what the root was (a docker.sock-style bind of a listening socket). It
// is the socket inode as a listener that exits leaves it: the listener is
// the restored tasks', made by whoever restores them. In the hook, CRIU
// restores the listener first and mntv2 binds the real socket.
func (a *applier) socketRoot(s Step) bool {
	fl := a.fillFor(s.From)
	if fl == nil || a.waitCreated(fl) != nil {
		return false
	}
	dir, name := path.Split(s.Path)
	parent := a.fds[s.From]
	if dir = strings.TrimSuffix(dir, "/"); dir != "" {
		fd, err := openInside(parent, dir, unix.O_PATH|unix.O_DIRECTORY, 0)
		if err != nil {
			return false
		}
		defer unix.Close(fd)
		parent = fd
	}
	if unix.Mknodat(parent, name, unix.S_IFSOCK|0o755, 0) != nil {
		return false
	}
	a.opt.Log.Warn("restore: the root of a bind is not in its tmpfs content, so it was a socket (tar leaves sockets out): made a socket inode for it (its listener is the restored tasks')",
		"mount", a.plan.Handles[s.Handle].What, "root", s.Path)
	return true
}

// inBareClone opens path inside a clone of the mount from, without the
// mounts on it; it returns the clone too, which the caller closes when
// done with the path.
func (a *applier) inBareClone(from int, path string) (clone, fd int, err error) {
	clone, err = a.sysFd("open_tree", func() (int, error) {
		return unix.OpenTree(from, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	})
	if err != nil {
		return -1, -1, err
	}
	fd, err = openInside(clone, path, unix.O_PATH, 0)
	return clone, fd, err
}

// attach moves a detached mount onto its mountpoint, resolved from the
// parent mount's fd; missing mountpoints are created.
func (a *applier) attach(s Step) error {
	err := a.attachOnce(s)
	if !errors.Is(err, unix.EROFS) || !a.plan.Handles[s.Parent].Live {
		return err
	}
	// A restored parent mounted read-only (a mount CRIU made, say under
	// ProtectSystem=strict): its mountpoint is made through a moment of
	// rw on that mount alone, as CRIU makes ghost files
	// (criu/mount.c try_remount_writable). A read-only superblock stays
	// EROFS.
	pfd := a.fds[s.Parent]
	if rerr := a.sys("mount_setattr", func() error {
		return unix.MountSetattr(pfd, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_clr: unix.MOUNT_ATTR_RDONLY})
	}); rerr != nil {
		return err
	}
	err = a.attachOnce(s)
	if rerr := a.sys("mount_setattr", func() error {
		return unix.MountSetattr(pfd, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY})
	}); err == nil {
		err = rerr
	}
	return err
}

// attachOnce is attach's work.
func (a *applier) attachOnce(s Step) error {
	src := a.fds[s.Handle]
	target := a.fds[s.Parent]
	if s.Path != "" {
		isDir, err := a.isDir(s.Handle)
		if err != nil {
			return err
		}
		// The mountpoint may come with the content: wait until it is
		// premade, or until every entry exists (see fill).
		fl := a.fillFor(s.Parent)
		premade := fl != nil && isDir && a.rootIn[s.Parent] == "" && fl.isPremade(s.Path)
		if premade {
			err = a.waitPremade(fl, s.Path)
		} else {
			err = a.waitCreated(fl)
		}
		if err != nil {
			return err
		}
		var record func(created)
		if s.Persistent {
			record = func(c created) { a.created = append(a.created, c) }
		}
		// The fast paths: a name in a mount this restore made (a file
		// mount too), or a directory mount below a directory of its
		// parent or on a persistent filesystem.
		if byName := !s.Persistent && !strings.Contains(s.Path, "/"); byName || isDir {
			dirfd, name, exists := target, s.Path, premade
			if byName {
				exists = exists || isDir && fl != nil && fl.x.hasDir(path.Join(a.rootIn[s.Parent], s.Path))
			} else if dirfd, name, err = a.dirOf(s, record); err != nil {
				return err
			}
			if done, err := a.attachNamed(s, dirfd, name, isDir, exists, record); done || err != nil {
				if err == nil {
					a.attachedAt(s)
				}
				return err
			}
		}
		fd, err := openMountpoint(target, s.Path, isDir, record)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		target = fd
	}
	if err := a.sys("move_mount", func() error {
		return unix.MoveMount(src, "", target, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
	}); err != nil {
		return err
	}
	a.attachedAt(s)
	return nil
}

// attachedAt notes a mount attached at s.Path under s.Parent: a persistent
// one for rollback, and the end of the cached directory (see dirOf)
// if the mount covers it.
func (a *applier) attachedAt(s Step) {
	if s.Persistent {
		a.attached[s.NS] = append(a.attached[s.NS], s.Handle)
	}
	if c := &a.dirCache; c.fd >= 0 && c.parent == s.Parent && (c.dir == s.Path || strings.HasPrefix(c.dir, s.Path+"/")) {
		unix.Close(c.fd)
		c.fd = -1
	}
}

// dirOf resolves the directory of s's mountpoint in its parent (a/b/c:
// a/b; "" is the parent's root) with the checked lookup, and keeps it for
// the next attach in it (siblings come one after another). It returns that
// directory and the mountpoint's last component.
func (a *applier) dirOf(s Step, record func(created)) (dirfd int, name string, err error) {
	dir, base := path.Split(s.Path)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		return a.fds[s.Parent], base, nil
	}
	c := &a.dirCache
	if c.fd < 0 || c.parent != s.Parent || c.dir != dir {
		if c.fd >= 0 {
			unix.Close(c.fd)
			c.fd = -1
		}
		fd, err := openMountpoint(a.fds[s.Parent], dir, true, record)
		if err != nil {
			return -1, "", err
		}
		c.fd, c.parent, c.dir = fd, s.Parent, dir
	}
	return c.fd, base, nil
}

// attachNamed is attach's fast path: it moves s's mount onto name in dirfd,
// resolved by move_mount without following a symlink. A mountpoint that
// exists (the tmpfs content has it, or a persistent filesystem most likely
// does) is moved onto first; a missing one is made, recorded when record
// is set, and moved onto. An existing entry is taken only as a directory
// (a directory mount cannot land on a symlink or a file: see notMountable);
// otherwise it reports not done, and attach's checked path decides and
// says why.
func (a *applier) attachNamed(s Step, dirfd int, name string, isDir, exists bool, record func(created)) (done bool, err error) {
	moveOnce := func() error { return unix.MoveMount(a.fds[s.Handle], "", dirfd, name, unix.MOVE_MOUNT_F_EMPTY_PATH) }
	move := func() error { return a.sys("move_mount", moveOnce) }
	if exists || s.Persistent {
		err := move()
		switch {
		case err == nil:
			return true, nil
		case notMountable(err):
			return false, nil
		case !s.Persistent || !errors.Is(err, unix.ENOENT):
			return true, err
		}
		// Missing on a persistent filesystem: the retry after the mkdir
		// is not counted, so that an attach counts one move either way
		// (fault injection relies on the count).
		move = func() error { return sysErr("move_mount", moveOnce()) }
	}
	made, err := createNew(dirfd, name, isDir)
	if err != nil {
		return true, err
	}
	if made {
		noteCreated(record, dirfd, name, isDir)
	} else if !isDir {
		return false, nil
	}
	if err := move(); made || !notMountable(err) {
		return true, err
	}
	return false, nil
}

// indexHandles reads from the plan, for each handle, the new superblock it
// is a bind of (NoHandle if none), its root in it, and whether that root
// is surely a directory (the root of a new superblock, or a bind of the
// whole of one that is).
func (a *applier) indexHandles() {
	n := len(a.plan.Handles)
	a.kind, a.sbOf, a.rootIn, a.sbOptions = make([]kind, n), make([]Handle, n), make([]string, n), map[Handle]string{}
	for i := range a.sbOf {
		a.sbOf[i] = NoHandle
	}
	for _, s := range a.plan.Steps {
		switch s.Op {
		case OpNewSuperblock:
			a.sbOf[s.Handle], a.kind[s.Handle] = s.Handle, kindDir
			a.sbOptions[s.Handle] = s.Options
		case OpBind:
			a.sbOf[s.Handle], a.rootIn[s.Handle] = a.sbOf[s.From], path.Join(a.rootIn[s.From], s.Path)
			if s.Path == "" {
				a.kind[s.Handle] = a.kind[s.From]
			}
		}
	}
}

// fillFor is the extraction into the superblock of a handle's mount.
func (a *applier) fillFor(h Handle) *fill {
	if sb := a.sbOf[h]; sb != NoHandle {
		return a.fillOf[sb]
	}
	return nil
}

// mountpointsIn lists, in plan order, the one-component mountpoints of
// directory mounts attached on the root of superblock sb: the extraction
// makes them first (see fill). One pass over the plan serves every
// superblock.
func (a *applier) mountpointsIn(sb Handle) []string {
	if a.premade == nil {
		a.premade = map[Handle][]string{}
		seen := map[Handle]map[string]bool{}
		for _, s := range a.plan.Steps {
			if s.Op != OpAttach || s.Persistent || s.Path == "" || s.Path == "." || s.Path == ".." ||
				strings.Contains(s.Path, "/") || a.sbOf[s.Parent] == NoHandle || a.rootIn[s.Parent] != "" ||
				a.kind[s.Handle] != kindDir {
				continue
			}
			in := a.sbOf[s.Parent]
			if seen[in] == nil {
				seen[in] = map[string]bool{}
			}
			if !seen[in][s.Path] {
				seen[in][s.Path] = true
				a.premade[in] = append(a.premade[in], s.Path)
			}
		}
	}
	return a.premade[sb]
}

// isDir says whether a handle's mount root is a directory.
func (a *applier) isDir(h Handle) (bool, error) {
	if a.kind[h] == kindUnknown {
		var st unix.Stat_t
		if err := unix.Fstat(a.fds[h], &st); err != nil {
			return false, sysErr("fstat", err)
		}
		a.kind[h] = kindOther
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			a.kind[h] = kindDir
		}
	}
	return a.kind[h] == kindDir, nil
}

// notMountable says whether a move by name failed on what is at the name:
// ENOTDIR for a file, EINVAL for a symlink (move_mount does not follow
// it). The checked lookup then says what is there.
func notMountable(err error) bool {
	return errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.EINVAL)
}

// mountAttr is the mount_setattr argument that sets exactly flags.
func mountAttr(f forest.Flags) *unix.MountAttr {
	attr := &unix.MountAttr{Attr_clr: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV |
		unix.MOUNT_ATTR_NOEXEC | unix.MOUNT_ATTR__ATIME | unix.MOUNT_ATTR_NODIRATIME | unix.MOUNT_ATTR_NOSYMFOLLOW}
	set := []struct {
		flag forest.Flags
		attr uint64
	}{
		{forest.ReadOnly, unix.MOUNT_ATTR_RDONLY}, {forest.NoSuid, unix.MOUNT_ATTR_NOSUID},
		{forest.NoDev, unix.MOUNT_ATTR_NODEV}, {forest.NoExec, unix.MOUNT_ATTR_NOEXEC},
		{forest.NoDiratime, unix.MOUNT_ATTR_NODIRATIME}, {forest.NoSymFollow, unix.MOUNT_ATTR_NOSYMFOLLOW},
		{forest.NoAtime, unix.MOUNT_ATTR_NOATIME}, {forest.StrictAtime, unix.MOUNT_ATTR_STRICTATIME},
	}
	for _, x := range set {
		if f&x.flag != 0 {
			attr.Attr_set |= x.attr
		}
	}
	return attr
}

// pin bind-mounts the namespace's nsfs file on PIN/mntns-<ID>, a new file.
func (a *applier) pin(s Step) error {
	name := PinName(s.NS)
	fd, err := unix.Openat(a.pinDir, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return sysErr("openat(O_CREAT|O_EXCL)", fmt.Errorf("%s: %w", filepath.Join(a.opt.PinDir, name), err))
	}
	defer unix.Close(fd)
	a.pins = append(a.pins, name)
	err = a.sys("mount(MS_BIND)", func() error {
		return unix.Mount(procFd(a.nsFds[s.NS]), procFd(fd), "", unix.MS_BIND, "")
	})
	return err
}

// rollback undoes a failed restore: pins, mounts on persistent
// mountpoints, then the mountpoints mntv2 created.
func (a *applier) rollback() {
	a.stopFills()
	for i := len(a.deleted) - 1; i >= 0; i-- {
		if err := a.deleted[i].remove(); err != nil {
			a.opt.Log.Warn("rollback: cannot remove a deleted root mntv2 made again", "path", a.deleted[i].path, "err", err)
		}
	}
	for i := len(a.pins) - 1; i >= 0; i-- {
		p := filepath.Join(a.opt.PinDir, a.pins[i])
		_ = unix.Unmount(p, unix.MNT_DETACH)
		if err := unix.Unlinkat(a.pinDir, a.pins[i], 0); err != nil {
			a.opt.Log.Warn("rollback: cannot remove pin", "pin", p, "err", err)
		}
	}
	// A mountpoint cannot be removed while something is mounted on it in
	// any namespace: detach those mounts inside their namespaces first.
	for ns, hs := range a.attached {
		w := a.workers[ns]
		if w == nil {
			continue
		}
		_ = w.run(func() error {
			// The worker's root has no /proc: reach each mount by fchdir.
			for i := len(hs) - 1; i >= 0; i-- {
				if a.fds[hs[i]] >= 0 && unix.Fchdir(a.fds[hs[i]]) == nil {
					_ = unix.Unmount(".", unix.MNT_DETACH)
				}
			}
			return unix.Chdir("/")
		})
	}
	for i := len(a.created) - 1; i >= 0; i-- {
		c := a.created[i]
		flags := 0
		if c.dir {
			flags = unix.AT_REMOVEDIR
		}
		if err := unix.Unlinkat(c.dirfd, c.name, flags); err != nil {
			a.opt.Log.Warn("rollback: cannot remove a mountpoint mntv2 created", "name", c.name, "err", err)
		}
	}
}

// release closes every fd and ends every worker, after success or rollback.
func (a *applier) release() {
	a.stopFills() // before any fd it writes through is closed
	for _, d := range a.deleted {
		d.close()
	}
	a.deleted = nil
	if a.dirCache.fd >= 0 {
		unix.Close(a.dirCache.fd)
		a.dirCache.fd = -1
	}
	for _, c := range a.created {
		unix.Close(c.dirfd)
	}
	a.created = nil
	for i, fd := range a.fds {
		if fd >= 0 {
			unix.Close(fd)
			a.fds[i] = -1
		}
	}
	for _, fd := range a.nsFds {
		unix.Close(fd)
	}
	for _, w := range a.workers {
		w.stop()
	}
	for _, fd := range a.idmapNS {
		unix.Close(fd)
	}
	a.idmapNS = map[string]int{}
	for _, fd := range []int{a.baseNS, a.pinDir, a.rootLock, a.userNS} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

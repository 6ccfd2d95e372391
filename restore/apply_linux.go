package restore

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"time"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/internal/nsexec"
	"golang.org/x/sys/unix"
)

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
	// closeLater: a drop step leaves its handle's fd to release, in
	// dropped, which closes them on success after the caller's wait
	// (closeAsync; see Early.Finish): closing a thousand fds is a
	// millisecond of CRIU's wait, and changes nothing verification sees (a
	// detached mount is in no namespace). On success release does not
	// wait for the workers' ends either.
	closeLater bool
	closeAsync bool
	dropped    []int

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
	// openers: the fsopen helpers, by user namespace inode (see opener).
	openers map[uint64]*nsexec.Opener
}

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
		baseNS: -1, pinDir: -1, rootLock: -1, userNS: -1, idmapNS: map[string]int{}, openers: map[uint64]*nsexec.Opener{}}
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
	if err := a.runSteps(done, res); err != nil {
		return nil, err
	}
	// Still able to roll back what this restore made. The extractions
	// may still be setting owners and times meanwhile (a few milliseconds
	// at a thousand directories, in CRIU's wait at post-restore): they
	// change no mount, and every step that needs their entries waited.
	if a.opt.Check != nil {
		if err := a.opt.Check(); err != nil {
			return nil, err
		}
	}
	if err := a.waitFills(); err != nil {
		return nil, err
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

// runSteps runs the plan's steps but those done (if set) says are done.
func (a *applier) runSteps(done []bool, res *Result) error {
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
			return err
		}
		i = j
	}
	return nil
}

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
		fd := a.fds[s.Handle]
		if a.closeLater {
			// Closed after the fills end (release): the extraction may
			// still write through it while the completion verifies.
			a.fds[s.Handle] = -1
			a.dropped = append(a.dropped, fd)
			return nil
		}
		if err := a.waitDone(a.fillFor(s.Handle)); err != nil {
			return err
		}
		a.fds[s.Handle] = -1
		// Closing the last fd of a detached mount unmounts it.
		return sysErr("close", unix.Close(fd))
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

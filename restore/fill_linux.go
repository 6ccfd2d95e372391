package restore

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/mntv2/mntv2/images"
	"golang.org/x/sys/unix"
)

// A tmpfs is filled beside the other steps: extraction (mkdir, mostly)
// does not take the mount locks that open_tree and move_mount take, so on
// a second CPU it overlaps the clones of other mounts. It writes through
// the new superblock's own detached mount, which nothing is ever mounted
// on. First it makes the directories that mounts of the plan are attached
// on in the filesystem's root (premake), and each of those attaches waits
// only for its own directory: the attaches follow the mkdirs as they come,
// in plan order. Other steps that need the content wait until every entry
// exists: a bind of a path inside the filesystem, an attach elsewhere in
// it. Racing the extraction to make mountpoints was tried: both threads
// then contend for the directory and the extraction redoes owners and
// modes, slower than waiting. The directories' times are set while the
// attaches run; closing the superblock's source, the pins and a rollback
// wait for that too.
type fill struct {
	step    int // the fill-tmpfs step, named in errors
	name    string
	x       *extraction
	created chan struct{} // every entry exists; createErr is set
	done    chan struct{} // directory times set too; doneErr and took are set

	// The premade directories, their index, and a channel per block of
	// premadeBlock of them, closed when the block is made (or premake
	// ended: premadeErr is set first).
	premade    []string
	premadeIdx map[string]int
	ready      []chan struct{}
	closed     int          // blocks closed, by the extraction's goroutine
	made       atomic.Int64 // premade directories made so far

	premadeErr, createErr, doneErr error
	took                           time.Duration

	// fsid, when set, is the fsuid and fsgid the extraction runs as.
	fsid *[2]int
}

const premadeBlock = 16

// startFill starts extracting f into the new tmpfs at fd, after making
// the directories premade; it owns f.
func startFill(step int, name string, f *os.File, fd int, limit int64, premade []string, owner, idmap, asRoot *images.IDMaps) *fill {
	x := newExtraction(fd, limit)
	x.owner, x.idmap = owner, idmap
	fl := &fill{step: step, name: name, x: x,
		created: make(chan struct{}), done: make(chan struct{}),
		premade: premade, premadeIdx: make(map[string]int, len(premade)),
		ready: make([]chan struct{}, (len(premade)+premadeBlock-1)/premadeBlock)}
	for i, n := range premade {
		fl.premadeIdx[n] = i
	}
	for i := range fl.ready {
		fl.ready[i] = make(chan struct{})
	}
	if asRoot != nil {
		fl.fsid = &[2]int{images.ToParent(asRoot.UID, 0), images.ToParent(asRoot.GID, 0)}
	}
	go fl.run(f)
	return fl
}

// asUser makes this thread's filesystem ids uid and gid, keeping its
// capabilities: the kernel creates no inode on a filesystem of a user
// namespace for an fsuid that namespace does not map (EOVERFLOW), and the
// change of fsuid from 0 clears the filesystem capabilities. The thread
// must never run other goroutines again (the caller locks it and never
// unlocks: it ends with the goroutine).
func asUser(uid, gid int) error {
	if err := unix.Setfsgid(gid); err != nil {
		return sysErr("setfsgid", err)
	}
	if err := unix.Setfsuid(uid); err != nil {
		return sysErr("setfsuid", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return sysErr("capget", err)
	}
	for i := range data {
		data[i].Effective = data[i].Permitted
	}
	return sysErr("capset", unix.Capset(&hdr, &data[0]))
}

func (fl *fill) run(f *os.File) {
	start := time.Now()
	defer func() {
		fl.x.close()
		f.Close()
		fl.took = time.Since(start)
		close(fl.done)
	}()
	var err error
	if fl.fsid != nil {
		// A superblock of the container's user namespace: made as its
		// root (never unlocked: the thread ends with the goroutine).
		runtime.LockOSThread()
		err = asUser(fl.fsid[0], fl.fsid[1])
	}
	if err == nil {
		err = fl.x.premake(fl.premade, func(n int) {
			fl.made.Store(int64(n))
			if n%premadeBlock == 0 {
				close(fl.ready[n/premadeBlock-1])
				fl.closed++
			}
		})
	}
	if err != nil {
		fl.premadeErr = fmt.Errorf("%s: %w", fl.name, err)
	}
	for ; fl.closed < len(fl.ready); fl.closed++ {
		close(fl.ready[fl.closed])
	}
	if err == nil {
		err = fl.x.create(f)
	}
	if err != nil {
		fl.createErr = fmt.Errorf("%s: %w", fl.name, err)
	}
	close(fl.created)
	if err == nil {
		if err := fl.x.setDirTimes(); err != nil {
			fl.doneErr = fmt.Errorf("%s: %w", fl.name, err)
		}
	}
}

// isPremade says whether the directory name of the filesystem's root is
// premade.
func (fl *fill) isPremade(name string) bool {
	_, ok := fl.premadeIdx[name]
	return ok
}

// waitPremade waits until the premade directory name exists. Its block
// may also close because premake failed: then the directory was not made,
// and premadeErr was set before the close.
func (a *applier) waitPremade(fl *fill, name string) error {
	i := fl.premadeIdx[name]
	<-fl.ready[i/premadeBlock]
	if fl.made.Load() > int64(i) {
		return nil
	}
	return a.stepError(fl.step, fl.premadeErr)
}

// waitCreated waits until every entry exists.
func (a *applier) waitCreated(fl *fill) error {
	if fl == nil {
		return nil
	}
	<-fl.created
	if fl.createErr != nil {
		return a.stepError(fl.step, fl.createErr)
	}
	return nil
}

// waitDone waits until the extraction has ended.
func (a *applier) waitDone(fl *fill) error {
	if err := a.waitCreated(fl); err != nil || fl == nil {
		return err
	}
	<-fl.done
	if fl.doneErr != nil {
		return a.stepError(fl.step, fl.doneErr)
	}
	return nil
}

// waitFills waits for every extraction, and returns the first error.
func (a *applier) waitFills() error {
	var first error
	for _, fl := range a.fills {
		if err := a.waitDone(fl); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// stopFills ends the extractions still running (rollback, release).
func (a *applier) stopFills() {
	for _, fl := range a.fills {
		fl.x.stop.Store(true)
	}
	for _, fl := range a.fills {
		<-fl.done
	}
}

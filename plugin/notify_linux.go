package plugin

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	criu "github.com/checkpoint-restore/go-criu/v7"
	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/shortlived"
)

// Notify is a go-criu Notify for RPC restores (criu swrk), with the
// action script's modes (reduce and complete by default; Settings.Strip
// for strip and reapply). Pass it to (*criu.Criu).Restore:
//
//	n, err := plugin.NewNotify("/var/lib/ct/checkpoint", plugin.Settings{})
//	...
//	err = c.Restore(opts, n)
//	n.Close() // puts the originals back if the restore failed early
//
// It does in its caller's process, and ahead, what the resident hook does
// in its own: NewNotify starts the watcher and then, on a goroutine, reads
// and rewrites the images and makes the completion ready, while CRIU
// starts and restores the tasks (CRIU reads no mountpoints image before
// pre-restore, which only waits for the rewrite). Embed it to add
// notifications of your own.
type Notify struct {
	criu.NoNotify
	dir *images.Dir
	set Settings
	// Report is what PostRestore did, once it ran.
	Report *Report

	lifeline *os.File      // its hangup makes the watcher put the originals back
	release  func()        // lets garbage collection run again
	ahead    chan struct{} // closed once the rewrite is done (or failed: aheadErr)
	aheadErr error
	pre      *rewritten
	prepared chan struct{} // closed once pre's completion is ready
	root     int           // the restored root task (SetupNamespaces)
}

var _ criu.Notify = (*Notify)(nil)

// NewNotify opens the images directory CRIU restores from, starts the
// watcher that keeps them safe (it puts the originals back if this process
// dies, or closes the Notify, before post-restore) and the rewrite.
func NewNotify(imagesDir string, s Settings) (*Notify, error) {
	d, err := images.Open(imagesDir)
	if err != nil {
		return nil, err
	}
	if s.Log == nil {
		s.Log = slog.Default()
	}
	n := &Notify{dir: d, set: s, ahead: make(chan struct{}), release: func() {}}
	if s.Disabled {
		close(n.ahead)
		return n, nil
	}
	// A restore's memory is live until its end, and a collection takes
	// the CPU CRIU and the completion run on: collect after Close.
	n.release = shortlived.Hold()
	token := NewToken()
	r, w, err := os.Pipe()
	var armed func() error
	if err == nil {
		armed, err = startWatcher(d, 0, token, s.LogFile, r)
		r.Close()
		if err != nil {
			w.Close()
		}
	}
	if err != nil {
		d.Close()
		n.release()
		return nil, fmt.Errorf("start the watcher that keeps the images safe: %w", err)
	}
	n.lifeline = w
	go n.rewrite(armed, token)
	return n, nil
}

// rewrite rewrites the images (writing once the watcher holds its
// lifeline), then makes the completion ready.
func (n *Notify) rewrite(armed func() error, token string) {
	defer close(n.ahead)
	s := n.set
	s.beforeWrite = func() error {
		if err := armed(); err != nil {
			return fmt.Errorf("start the watcher that keeps the images safe: %w", err)
		}
		return nil
	}
	// The completion is made ready as soon as the rewrite is computed:
	// writing it (an fsync of the directory or two) takes milliseconds
	// the completion's early steps run in. A rewrite that fails after has
	// the completion closed unused (Close).
	s.planned = n.prepare
	s.takePrepared = true
	pre, err := preRestore(n.dir, os.Getpid(), token, os.Getenv, s)
	if err != nil {
		n.aheadErr = err
		return
	}
	if n.prepared == nil {
		n.prepare(pre) // nothing to rewrite
	}
}

// prepare makes pre's completion ready on a goroutine (n.prepared).
func (n *Notify) prepare(pre *rewritten) {
	n.pre, n.prepared = pre, make(chan struct{})
	go func() {
		defer close(n.prepared)
		pre.prepare(n.dir, n.set.Config, n.set.Log)
	}()
}

// PreRestore waits for the rewrite of the images.
func (n *Notify) PreRestore() error {
	<-n.ahead
	return n.aheadErr
}

// SetupNamespaces notes the restored root task: go-criu names it here
// only, and PostSetupNamespaces needs it.
func (n *Notify) SetupNamespaces(pid int32) error {
	n.root = int(pid)
	return nil
}

// PostSetupNamespaces begins the completion in the root task's namespace,
// which holds every mount CRIU makes now, while CRIU restores the tasks
// (restore.PreparedLive.Advance; the resident hook does the same). It
// never waits: a completion not ready yet is all done at PostRestore.
func (n *Notify) PostSetupNamespaces() error {
	if n.set.Disabled || n.root <= 0 {
		return nil
	}
	<-n.ahead // done: PreRestore waited for it
	if n.aheadErr != nil || n.prepared == nil {
		return nil
	}
	select {
	case <-n.prepared:
	default:
		return nil
	}
	if n.pre.live == nil {
		return nil
	}
	// The root task waits for this notification to end before it leaves
	// the namespace it built the restored ones in (see leftYard).
	if yard, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", n.root)); err == nil {
		advanceRoot(n.pre.live, n.dir, n.root, yard, func() bool { return false })
	}
	return nil
}

// PostRestore makes the mounts CRIU was not given, applies the sharing of
// the tree rooted at pid and verifies it.
func (n *Notify) PostRestore(pid int32) error {
	if n.set.Disabled {
		return nil
	}
	<-n.ahead
	if n.aheadErr != nil {
		return n.aheadErr
	}
	<-n.prepared
	rep, err := postRestore(n.dir, int(pid), n.set.Config, n.pre)
	n.Report = rep
	return err
}

// Close puts the original images back if they are still rewritten (a
// restore that failed before post-restore), ends the watcher and closes
// the directory.
func (n *Notify) Close() error {
	<-n.ahead
	if n.prepared != nil {
		<-n.prepared
		if n.pre.live != nil {
			n.pre.live.Close()
			n.pre.live = nil
		}
	}
	// (Recover syncs the directory: the names post-restore put back too.)
	_, err := Recover(n.dir)
	if err == nil && n.Report != nil {
		err = n.dir.Sync()
	}
	if n.lifeline != nil {
		n.lifeline.Close()
	}
	n.release()
	return errors.Join(err, n.dir.Close())
}

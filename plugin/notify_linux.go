package plugin

import (
	"log/slog"
	"os"

	criu "github.com/checkpoint-restore/go-criu/v7"
	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/proctree"
)

// Notify is a go-criu Notify for RPC restores (criu swrk): the same
// strip-and-reapply as the action script. Pass it to (*criu.Criu).Restore:
//
//	n, err := plugin.NewNotify("/var/lib/ct/checkpoint", plugin.Settings{})
//	...
//	err = c.Restore(opts, n)
//	n.Close() // puts the originals back if the restore failed early
//
// Embed it to add notifications of your own.
type Notify struct {
	criu.NoNotify
	dir *images.Dir
	set Settings
	// Report is what PostRestore did, once it ran.
	Report *Report
}

var _ criu.Notify = (*Notify)(nil)

// NewNotify opens the images directory CRIU restores from.
func NewNotify(imagesDir string, s Settings) (*Notify, error) {
	d, err := images.Open(imagesDir)
	if err != nil {
		return nil, err
	}
	if s.Log == nil {
		s.Log = slog.Default()
	}
	return &Notify{dir: d, set: s}, nil
}

// PreRestore rewrites the images. The watcher follows the criu swrk child
// of this process (or this process, when there is none to tell apart).
func (n *Notify) PreRestore() error {
	return PreRestore(n.dir, criuChild(), n.set)
}

// PostRestore applies and verifies the sharing of the tree rooted at pid.
func (n *Notify) PostRestore(pid int32) error {
	rep, err := PostRestore(n.dir, int(pid), n.set.Config)
	n.Report = rep
	return err
}

// Close puts the original images back if they are still rewritten (a
// restore that failed before post-restore) and closes the directory.
func (n *Notify) Close() error {
	_, err := Recover(n.dir)
	if cerr := n.dir.Close(); err == nil {
		err = cerr
	}
	return err
}

// criuChild is the pid of this process's one child named criu, or this
// process's pid.
func criuChild() int {
	self := os.Getpid()
	found := 0
	for _, pid := range proctree.Children(self) {
		if proctree.Comm(pid) == "criu" {
			if found != 0 {
				return self
			}
			found = pid
		}
	}
	if found == 0 {
		return self
	}
	return found
}

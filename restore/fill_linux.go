package restore

import (
	"fmt"
	"os"
	"time"
)

// A tmpfs is filled beside the other steps: extraction (mkdir, mostly)
// does not take the mount locks that open_tree and move_mount take, so on
// a second CPU it overlaps the clones of other mounts. It writes through
// the new superblock's own detached mount, which nothing is ever mounted
// on. Steps wait only where they need the content: a bind of a path inside
// the filesystem and an attach onto a mountpoint in it wait until every
// entry exists (racing the extraction to make mountpoints was tried: both
// threads then contend for the directory and the extraction redoes owners
// and modes, slower than waiting). The directories' times are set while
// the attaches run; closing the superblock's source, the pins and a
// rollback wait for that too.
type fill struct {
	step    int // the fill-tmpfs step, named in errors
	name    string
	x       *extraction
	created chan struct{} // every entry exists; createErr is set
	done    chan struct{} // directory times set too; doneErr and took are set

	createErr, doneErr error
	took               time.Duration
}

// startFill starts extracting f into the new tmpfs at fd; it owns f.
func startFill(step int, name string, f *os.File, fd int, limit int64) *fill {
	fl := &fill{step: step, name: name, x: newExtraction(fd, limit),
		created: make(chan struct{}), done: make(chan struct{})}
	go fl.run(f)
	return fl
}

func (fl *fill) run(f *os.File) {
	start := time.Now()
	defer func() {
		fl.x.close()
		f.Close()
		fl.took = time.Since(start)
		close(fl.done)
	}()
	err := fl.x.create(f)
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
	if fl == nil {
		return nil
	}
	<-fl.done
	if fl.createErr != nil {
		return a.stepError(fl.step, fl.createErr)
	}
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

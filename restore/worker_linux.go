package restore

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// worker is a goroutine locked to its own OS thread that lives in one target
// mount namespace. Its thread is never unlocked, so when the goroutine ends
// the Go runtime ends the thread with it, and nothing else ever runs in the
// namespace.
type worker struct {
	ns    uint32
	tasks chan func()
	done  chan struct{}
}

// startWorker starts a thread in the mount namespace baseNS (an fd); the
// thread has its own fs struct (unshare(CLONE_FS)), so it may setns and
// pivot_root without touching the rest of the process.
func startWorker(ns uint32, baseNS int) (*worker, error) {
	w := &worker{ns: ns, tasks: make(chan func()), done: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		defer close(w.done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			ready <- sysErr("unshare(CLONE_FS)", err)
			return
		}
		if err := unix.Setns(baseNS, unix.CLONE_NEWNS); err != nil {
			ready <- sysErr("setns(CLONE_NEWNS)", err)
			return
		}
		ready <- nil
		for fn := range w.tasks {
			fn()
		}
	}()
	if err := <-ready; err != nil {
		<-w.done
		return nil, err
	}
	return w, nil
}

// run runs fn on the worker's thread and waits for it.
func (w *worker) run(fn func() error) error {
	errc := make(chan error, 1)
	w.tasks <- func() { errc <- fn() }
	return <-errc
}

// stop ends the worker and its thread.
func (w *worker) stop() {
	close(w.tasks)
	<-w.done
}

// end ends the worker without waiting: it runs nothing more, and its
// goroutine ends as soon as it is scheduled (a wakeup of its parked
// thread, up to a millisecond on a loaded machine).
func (w *worker) end() { close(w.tasks) }

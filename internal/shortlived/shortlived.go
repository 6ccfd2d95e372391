// Package shortlived tunes the Go runtime for a process that does one job
// and exits: mntv2 itself, and each case of the benchmark, which measures
// mntv2 as it runs.
package shortlived

import (
	"os"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// Tune leaves garbage to the process's end: a restore's memory is mostly
// live until then, and a collection takes the CPU a tmpfs extraction or a
// read of mountinfo runs on beside the mount syscalls (about 1 ms of 10 at
// 1000 mounts). Past 256 MiB (some 20,000 mounts planned) the runtime
// collects anyway: huge trees keep their memory bounded (50,000 mounts
// plan in under 270 MB). GOGC or GOMEMLIMIT in the environment win.
func Tune() {
	if os.Getenv("GOGC") == "" && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(256 << 20)
		debug.SetGCPercent(-1)
	}
}

var hold struct {
	sync.Mutex
	depth   int
	percent int
	limit   int64
}

// Hold is Tune for a span of a long-lived process (a container manager
// restoring through mntv2's Notify): garbage collection waits until every
// Hold is released, or until the heap grows 256 MiB past what it is now.
// GOGC or GOMEMLIMIT in the environment win, as with Tune.
func Hold() (release func()) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return func() {}
	}
	hold.Lock()
	defer hold.Unlock()
	if hold.depth == 0 {
		s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}}
		metrics.Read(s)
		limit := int64(256 << 20)
		if s[0].Value.Kind() == metrics.KindUint64 {
			limit += int64(s[0].Value.Uint64())
		}
		hold.limit = debug.SetMemoryLimit(-1)
		if limit < hold.limit {
			debug.SetMemoryLimit(limit)
		}
		hold.percent = debug.SetGCPercent(-1)
	}
	hold.depth++
	var once sync.Once
	return func() {
		once.Do(func() {
			hold.Lock()
			defer hold.Unlock()
			if hold.depth--; hold.depth == 0 {
				debug.SetGCPercent(hold.percent)
				debug.SetMemoryLimit(hold.limit)
			}
		})
	}
}

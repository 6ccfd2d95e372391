// Package shortlived tunes the Go runtime for a process that does one job
// and exits: mntv2 itself, and each case of the benchmark, which measures
// mntv2 as it runs.
package shortlived

import (
	"os"
	"runtime/debug"
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

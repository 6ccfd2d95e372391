// Package proctree reads process trees under /proc: the children of a
// process (of every thread), a tree from its root, a process's name and
// its pid in its own pid namespace.
package proctree

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Children lists the children of pid, of every thread of it
// (/proc/PID/task/*/children), in increasing order. A process that is
// gone has none.
func Children(pid int) []int {
	threads, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, t := range threads {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread ended meanwhile
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Walk lists root and its descendants, parents first (breadth first, each
// process's children in increasing pid order). It fails only when root
// does not exist.
func Walk(root int) ([]int, error) {
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", root)); err != nil {
		return nil, fmt.Errorf("pid %d: no such process", root)
	}
	var out []int
	seen := map[int]bool{}
	for queue := []int{root}; len(queue) > 0; queue = queue[1:] {
		pid := queue[0]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		out = append(out, pid)
		queue = append(queue, Children(pid)...)
	}
	return out, nil
}

// Comm is the name of pid (/proc/PID/comm), "" when it is gone.
func Comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// InnermostPID is pid's number in its own pid namespace (the last NSpid
// of /proc/PID/status).
func InnermostPID(pid int) (int, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "NSpid:"); ok {
			fields := strings.Fields(rest)
			if len(fields) == 0 {
				break
			}
			return strconv.Atoi(fields[len(fields)-1])
		}
	}
	return pid, sc.Err()
}

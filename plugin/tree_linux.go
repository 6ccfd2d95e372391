package plugin

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/proctree"
	"golang.org/x/sys/unix"
)

// Task is a live process of a restored tree.
type Task struct {
	PID  int // in this pid namespace (for /proc)
	VPID int // in the tree's own pid namespace: the images' pid
}

// TreeTasks lists a live process tree from its root: the root, then its
// children (of every thread), recursively. VPID is the innermost pid.
func TreeTasks(root int) ([]Task, error) {
	pids, err := proctree.Walk(root)
	if err != nil {
		return nil, err
	}
	var tasks []Task
	for _, pid := range pids {
		vpid, err := proctree.InnermostPID(pid)
		if err != nil {
			if pid == root {
				return nil, err
			}
			continue // gone meanwhile
		}
		tasks = append(tasks, Task{PID: pid, VPID: vpid})
	}
	return tasks, nil
}

// RestoredNamespaces finds, for every mount namespace of the images, the
// nsfs file of a live task of the tree rooted at root that is in it:
// pstree and ids-<pid>.img say which task is in which namespace.
func RestoredNamespaces(d *images.Dir, root int) (map[uint32]string, error) {
	pstree, err := d.Tasks()
	if err != nil {
		return nil, err
	}
	nsIDs, err := d.MountNamespaces()
	if err != nil {
		return nil, err
	}
	// Each task's namespace, by its pid in the images.
	nsOf := make(map[uint32]uint32, len(pstree))
	for _, t := range pstree {
		if ids, err := d.TaskIDs(t.Pid); err == nil && ids.MntNS != 0 {
			nsOf[t.Pid] = ids.MntNS
		} // helpers and zombies have no ids image
	}
	if len(nsIDs) == 1 && len(pstree) > 0 && nsOf[pstree[0].Pid] == nsIDs[0] {
		// One namespace, the root task's (most containers): no walk of
		// the tree (a third of a millisecond of CRIU's wait).
		return map[uint32]string{nsIDs[0]: fmt.Sprintf("/proc/%d/ns/mnt", root)}, nil
	}
	tasks, err := TreeTasks(root)
	if err != nil {
		return nil, fmt.Errorf("restored tree at pid %d: %w", root, err)
	}
	byVPID := make(map[int]int, len(tasks))
	for _, t := range tasks {
		byVPID[t.VPID] = t.PID
	}
	found := map[uint32]string{}
	for _, t := range pstree {
		ns, ok := nsOf[t.Pid]
		if !ok {
			continue
		}
		if _, done := found[ns]; done {
			continue
		}
		if pid, ok := byVPID[int(t.Pid)]; ok {
			found[ns] = fmt.Sprintf("/proc/%d/ns/mnt", pid)
		}
	}
	var missing []string
	for _, id := range nsIDs {
		if _, ok := found[id]; !ok {
			missing = append(missing, strconv.FormatUint(uint64(id), 10))
		}
	}
	if len(missing) > 0 {
		return found, fmt.Errorf("mount namespaces %s of the images: no live task of the tree at pid %d is in them", strings.Join(missing, ", "), root)
	}
	return found, nil
}

// TreeNamespaceFiles lists the distinct mount namespaces of a live process
// tree, as /proc/PID/ns/mnt files, ordered by the smallest pid (in the
// tree's pid namespace) of a task in each: the same order for a tree and
// its restore.
func TreeNamespaceFiles(root int) ([]string, error) {
	tasks, err := TreeTasks(root)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(tasks, func(a, b Task) int { return a.VPID - b.VPID })
	seen := map[uint64]bool{}
	var files []string
	for _, t := range tasks {
		p := fmt.Sprintf("/proc/%d/ns/mnt", t.PID)
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			continue
		}
		if !seen[st.Ino] {
			seen[st.Ino] = true
			files = append(files, p)
		}
	}
	return files, nil
}

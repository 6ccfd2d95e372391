// Package dump writes CRIU-format mount images of live processes: the
// inventory, pstree, ids-<pid> and mountpoints-<ns> images (and optionally
// tmpfs content) of a process and its descendants. It lets mntv2 make test
// images without CRIU; CRIU's crit and mntv2 read them.
//
// Mountpoints are read from /proc/PID/mountinfo, so they are relative to
// the task's root; a container that pivot_roots (every runtime does) has
// its namespace's root there. Mounts are not marked external: dump is for
// trees built from filesystems mntv2 creates.
package dump

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/proctree"
	"golang.org/x/sys/unix"
)

// Options say what to dump beyond the mount tree.
type Options struct {
	// TmpfsContent writes tmpfs-dev-<dev>.tar.gz.img for every tmpfs.
	TmpfsContent bool
}

// Summary says what was written.
type Summary struct {
	Tasks      int
	Namespaces []uint32
	Mounts     int
	Tmpfs      int
}

type task struct {
	images.Task
	nsIno uint64
}

// Dump writes the mount images of pid and its descendants into dir.
func Dump(pid int, dir string, opt Options) (*Summary, error) {
	tasks, err := processTree(pid)
	if err != nil {
		return nil, err
	}
	// Namespace ids in order of discovery, starting at 1.
	nsID := map[uint64]uint32{}
	nsPid := map[uint32]int{}
	var order []uint32
	for _, t := range tasks {
		if _, ok := nsID[t.nsIno]; !ok {
			id := uint32(len(nsID) + 1)
			nsID[t.nsIno] = id
			nsPid[id] = int(t.Pid)
			order = append(order, id)
		}
	}
	var input []forest.NamespaceMounts
	for _, id := range order {
		nm, err := forest.ReadPID(nsPid[id], id)
		if err != nil {
			return nil, err
		}
		input = append(input, nm)
	}
	f, err := forest.Build(input)
	if err != nil {
		return nil, fmt.Errorf("the live tree of pid %d: %w", pid, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	d, err := images.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	var imgs []*images.Image
	// A namespace owned by a user namespace other than this one: its
	// tasks' user namespace, as CRIU writes it (ids and userns-<id>.img;
	// ids above the mount namespaces').
	userNS := map[uint32]uint32{}
	for _, nm := range input {
		if nm.Owner != nil {
			id := uint32(len(order) + 1 + len(userNS))
			userNS[nm.ID] = id
			img, err := images.EncodeUserns(id, *nm.Owner)
			if err != nil {
				return nil, err
			}
			imgs = append(imgs, img)
		}
	}
	plain := make([]images.Task, len(tasks))
	for i, t := range tasks {
		plain[i] = t.Task
		img, err := images.EncodeTaskIDs(t.Pid, images.TaskIDs{MntNS: nsID[t.nsIno], UserNS: userNS[nsID[t.nsIno]]})
		if err != nil {
			return nil, err
		}
		imgs = append(imgs, img)
	}
	img, err := images.EncodeTasks(plain)
	if err != nil {
		return nil, err
	}
	imgs = append(imgs, img)
	if img, err = images.EncodeInventory(images.TaskIDs{MntNS: nsID[tasks[0].nsIno]}); err != nil {
		return nil, err
	}
	imgs = append(imgs, img)
	sum := &Summary{Tasks: len(tasks), Namespaces: order}
	// The root task's user namespace, when it has one of its own: CRIU
	// writes superblock ids and tmpfs owners as it shows them.
	var view *images.IDMaps
	for _, nm := range input {
		if nm.ID == nsID[tasks[0].nsIno] {
			view = nm.Owner
		}
	}
	for _, ns := range f.Namespaces {
		var mounts []images.Mount
		_ = ns.Walk(func(m *forest.Mount) error {
			e := forest.ToImageMount(m)
			if view != nil {
				e.Options = view.MapOptionIDs(e.Options, containerID)
			}
			mounts = append(mounts, e)
			return nil
		})
		sum.Mounts += len(mounts)
		img, err := images.EncodeMounts(ns.ID, mounts)
		if err != nil {
			return nil, err
		}
		imgs = append(imgs, img)
	}
	for _, img := range imgs {
		if err := d.WriteImage(img); err != nil {
			return nil, err
		}
	}
	// What the images cannot carry (mntv2's dump-side record): idmaps.
	x := &images.Extra{}
	for _, ns := range f.Namespaces {
		for _, m := range ns.Mounts {
			if m.IDMap != nil {
				x.Mounts = append(x.Mounts, images.ExtraMount{NS: ns.ID, MntID: m.ID, IDMap: m.IDMap})
			}
		}
	}
	if err := d.WriteExtra(x); err != nil {
		return nil, err
	}
	if opt.TmpfsContent {
		n, err := writeTmpfsContent(f, nsPid, d, view)
		if err != nil {
			return nil, err
		}
		sum.Tmpfs = n
	}
	return sum, d.Sync()
}

// processTree lists pid and its descendants, parents first.
func processTree(pid int) ([]task, error) {
	pids, err := proctree.Walk(pid)
	if err != nil {
		return nil, err
	}
	var out []task
	for _, p := range pids {
		t, err := readTask(p)
		if err != nil {
			if p == pid {
				return nil, err
			}
			continue // gone meanwhile
		}
		out = append(out, t)
	}
	return out, nil
}

func readTask(pid int) (task, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return task{}, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return task{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	fields := strings.Fields(s[i+1:]) // state ppid pgrp session ...
	if len(fields) < 4 {
		return task{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	num := func(s string) uint32 { n, _ := strconv.ParseUint(s, 10, 32); return uint32(n) }
	t := task{Task: images.Task{Pid: uint32(pid), Ppid: num(fields[1]), Pgid: num(fields[2]), Sid: num(fields[3])}}
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/mnt", pid), &st); err != nil {
		return task{}, err
	}
	t.nsIno = st.Ino
	if thr, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid)); err == nil {
		for _, th := range thr {
			t.Threads = append(t.Threads, num(th.Name()))
		}
	}
	return t, nil
}

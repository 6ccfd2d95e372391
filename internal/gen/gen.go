// Package gen makes synthetic mount forests of a given shape and size, and
// writes them as CRIU images (inventory, pstree, ids, mountpoints): inputs
// for benchmarks that need no CRIU and no live tree.
package gen

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
)

// Shapes lists the shapes Forest makes.
var Shapes = []string{"peers", "groups", "chains", "nested", "stacked", "multins", "mix"}

// Every namespace's mounts hang below a private tmpfs "box" at /box (so
// the restore creates their mountpoints in a tmpfs, not in the root). The
// root mount is on superblock rootDev; the box on boxDev; shapes use
// superblocks from firstDev.
const (
	rootDev  = 1
	boxDev   = 2
	firstDev = 3
	relatime = forest.Relatime
)

// builder adds mounts to namespaces with fresh ids, devices and groups.
type builder struct {
	ns    []forest.NamespaceMounts
	id    uint32
	dev   uint32
	group uint32
	box   []uint32 // box mount id per namespace
}

func newBuilder(namespaces int) *builder {
	b := &builder{id: 1, dev: firstDev}
	for i := 0; i < namespaces; i++ {
		nsID := uint32(10 + i)
		root := forest.Mount{ID: b.next(), Mountpoint: "/", Root: "/", FSType: "tmpfs", Source: "root", Dev: rootDev, Flags: relatime}
		root.ParentID = root.ID
		box := forest.Mount{ID: b.next(), ParentID: root.ID, Mountpoint: "/box", Root: "/", FSType: "tmpfs", Source: "box", Dev: boxDev, Flags: relatime}
		if i > 0 {
			box.Dev = b.newDev() // each namespace's box is its own tmpfs
		}
		b.ns = append(b.ns, forest.NamespaceMounts{ID: nsID, Mounts: []forest.Mount{root, box}})
		b.box = append(b.box, box.ID)
	}
	return b
}

func (b *builder) next() uint32     { b.id++; return b.id - 1 }
func (b *builder) newDev() uint32   { b.dev++; return b.dev - 1 }
func (b *builder) newGroup() uint32 { b.group++; return b.group }

// add puts a tmpfs mount of dev into namespace i and returns its id.
func (b *builder) add(i int, parent uint32, mountpoint, root string, dev, shared, master uint32) uint32 {
	m := forest.Mount{ID: b.next(), ParentID: parent, Mountpoint: mountpoint, Root: root, FSType: "tmpfs",
		Source: fmt.Sprintf("sb%d", dev), Dev: dev, Flags: relatime, PeerGroup: shared, Master: master}
	b.ns[i].Mounts = append(b.ns[i].Mounts, m)
	return m.ID
}

func (b *builder) count() int {
	n := 0
	for _, ns := range b.ns {
		n += len(ns.Mounts)
	}
	return n
}

// Forest makes a forest of the shape with about n mounts in all.
func Forest(shape string, n int) ([]forest.NamespaceMounts, error) {
	namespaces := 1
	if shape == "multins" {
		namespaces = 3
	}
	b := newBuilder(namespaces)
	left := n - b.count()
	var err error
	if shape == "mix" {
		parts := []string{"peers", "groups", "chains", "nested", "stacked"}
		for _, p := range parts {
			if err = b.shape(p, left/len(parts), fmt.Sprintf("/box/%s", p)); err != nil {
				return nil, err
			}
		}
	} else {
		err = b.shape(shape, left, "/box")
	}
	if err != nil {
		return nil, err
	}
	return b.ns, nil
}

// shape adds about n mounts of a shape below dir (created as a private
// tmpfs mount when it is not /box) in namespace 0 (or all, for multins).
func (b *builder) shape(shape string, n int, dir string) error {
	parent := b.box[0]
	if dir != "/box" {
		parent = b.add(0, b.box[0], dir, "/", b.newDev(), 0, 0)
		n--
	}
	switch shape {
	case "peers": // one big peer group of one superblock
		dev, g := b.newDev(), b.newGroup()
		for i := 0; i < n; i++ {
			b.add(0, parent, fmt.Sprintf("%s/p%d", dir, i), "/", dev, g, 0)
		}
	case "groups": // many groups of four peers, sixteen groups per superblock
		var dev, g uint32
		for i := 0; i < n; i++ {
			if i%64 == 0 {
				dev = b.newDev()
			}
			if i%4 == 0 {
				g = b.newGroup()
			}
			b.add(0, parent, fmt.Sprintf("%s/g%d", dir, i), "/", dev, g, 0)
		}
	case "chains": // master chains of fifty: each mount a shared slave of the one before
		var dev, prev uint32
		for i := 0; i < n; i++ {
			if i%50 == 0 {
				dev, prev = b.newDev(), 0
			}
			g := b.newGroup()
			b.add(0, parent, fmt.Sprintf("%s/c%d", dir, i), "/", dev, g, prev)
			prev = g
		}
	case "nested": // binds of subdirectories nested eight wide, all peers
		dev, g := b.newDev(), b.newGroup()
		ids := []uint32{}
		mps := []string{}
		for i := 0; i < n; i++ {
			p, mp, root := parent, fmt.Sprintf("%s/n%d", dir, i), "/"
			if i > 0 {
				up := (i - 1) / 8
				p, mp, root = ids[up], fmt.Sprintf("%s/n%d", mps[up], i), fmt.Sprintf("/d%d", i%32)
			}
			ids = append(ids, b.add(0, p, mp, root, dev, g, 0))
			mps = append(mps, mp)
		}
	case "stacked": // stacks of ten on one mountpoint: shared and slave in turn
		dev, g := b.newDev(), b.newGroup()
		var below uint32
		for i := 0; i < n; i++ {
			mp := fmt.Sprintf("%s/s%d", dir, i/10)
			p := parent
			if i%10 != 0 {
				p = below
			}
			shared, master := g, uint32(0)
			if i%2 == 1 {
				shared, master = 0, g
			}
			below = b.add(0, p, mp, "/", dev, shared, master)
		}
	case "multins": // three namespaces: peers in the first two, slaves in the third
		per := n / 3
		for i := 0; i < per; i++ {
			dev, g := b.newDev(), b.newGroup()
			mp := fmt.Sprintf("%s/m%d", dir, i)
			b.add(0, b.box[0], mp, "/", dev, g, 0)
			b.add(1, b.box[1], mp, "/", dev, g, 0)
			b.add(2, b.box[2], mp, "/", dev, 0, g)
		}
	default:
		return fmt.Errorf("unknown shape %q (want one of %v)", shape, Shapes)
	}
	return nil
}

// WriteImages writes the forest as CRIU images into dir: one task per
// namespace (pid 1, 2, ...), its ids image, inventory and pstree.
func WriteImages(d *images.Dir, nss []forest.NamespaceMounts) error {
	sort.Slice(nss, func(i, j int) bool { return nss[i].ID < nss[j].ID })
	var tasks []images.Task
	for i, ns := range nss {
		pid := uint32(i + 1)
		ppid := uint32(0)
		if i > 0 {
			ppid = 1
		}
		tasks = append(tasks, images.Task{Pid: pid, Ppid: ppid, Pgid: 1, Sid: 1, Threads: []uint32{pid}})
		ids := images.TaskIDs{MntNS: ns.ID}
		img, err := images.EncodeTaskIDs(pid, ids)
		if err != nil {
			return err
		}
		if err := d.WriteImage(img); err != nil {
			return err
		}
		entries := make([]images.Mount, len(ns.Mounts))
		for j := range ns.Mounts {
			entries[j] = forest.ToImageMount(&ns.Mounts[j])
		}
		mimg, err := images.EncodeMounts(ns.ID, entries)
		if err != nil {
			return err
		}
		if err := d.WriteImage(mimg); err != nil {
			return err
		}
	}
	if err := writeTmpfsContent(d, nss); err != nil {
		return err
	}
	img, err := images.EncodeTasks(tasks)
	if err != nil {
		return err
	}
	if err := d.WriteImage(img); err != nil {
		return err
	}
	inv, err := images.EncodeInventory(images.TaskIDs{MntNS: nss[0].ID})
	if err != nil {
		return err
	}
	return d.WriteImage(inv)
}

// writeTmpfsContent writes, for every superblock with mounts of a
// subdirectory, a tmpfs-dev-<dev>.tar.gz.img holding those directories.
func writeTmpfsContent(d *images.Dir, nss []forest.NamespaceMounts) error {
	dirs := map[uint32]map[string]bool{}
	for _, ns := range nss {
		for _, m := range ns.Mounts {
			if m.Root == "/" || m.Dev == rootDev {
				continue
			}
			if dirs[m.Dev] == nil {
				dirs[m.Dev] = map[string]bool{}
			}
			for p := m.Root; p != "/" && p != "."; p = path.Dir(p) {
				dirs[m.Dev][strings.TrimPrefix(p, "/")] = true
			}
		}
	}
	for dev, set := range dirs {
		names := make([]string, 0, len(set))
		for n := range set {
			names = append(names, n)
		}
		sort.Strings(names) // parents first
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		tw := tar.NewWriter(zw)
		if err := tw.WriteHeader(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
			return err
		}
		for _, n := range names {
			if err := tw.WriteHeader(&tar.Header{Name: "./" + n + "/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
				return err
			}
		}
		if err := tw.Close(); err != nil {
			return err
		}
		if err := zw.Close(); err != nil {
			return err
		}
		if err := d.WriteFile(images.TmpfsFile(dev), buf.Bytes(), 0o600); err != nil {
			return err
		}
	}
	return nil
}

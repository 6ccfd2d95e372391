// randtree prints a random mount scenario: a scenario.sh for the e2e
// container (hack/lib/ct-init.sh runs it as root in the container's mount
// namespace, whose /tmp is a private tmpfs), made of mount(8)-level
// operations chosen by a PRNG seeded with -seed: tmpfs mounts with random
// options, binds and rbinds of directories, mounts and files, every
// propagation change, flag remounts, unmounts (lazy ones too), overmounts,
// and nested mount namespaces (unshare --mount --propagation MODE) whose
// process stays alive, with operations of their own.
//
// The same seed always gives the same script. The generator keeps a model
// of the mounts (model.go) to pick operations that are valid; each line
// still runs through r(), which logs a failed operation instead of stopping
// the scenario, so the script always succeeds; hack/diff-runner.sh counts
// the logged failures.
//
// usage: go run ./hack/randtree -seed N [-max-mounts M] [-no-strictatime]
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path"
	"strings"
)

type gen struct {
	rng      *rand.Rand
	md       *model
	name     int // the last name given to a new directory or file
	nsCount  int
	target   int // mounts of the scenario's own (every namespace) to aim for
	maxMount int
	ops      int
	atimes   []string // the atime modes to pick from
}

// The container's base mounts (hack/lib/ct-init.sh).
var foreignBase = []string{"bin", "lib", "lib64", "usr", "etc", "sbin", "proc"}

func (g *gen) baseNamespace() *nspace {
	md := g.md
	ns := &nspace{id: 1}
	rootFS := md.newFS("ctroot")
	for _, d := range append(foreignBase, "dev", "tmp", ".rt") {
		rootFS.dirs["/"+d] = true
	}
	root := md.newMount(ns, rootFS, "/")
	root.base = true
	ns.root = root
	md.mounts = append(md.mounts, root)
	add := func(parent *mount, d string, m *mount) {
		m.base = true
		md.attachAt(m, parent, d)
		md.mounts = append(md.mounts, m)
	}
	for _, d := range foreignBase {
		add(root, "/"+d, md.newMount(ns, md.newFS("foreign"), "/"))
	}
	devFS := md.newFS("dev")
	devFS.files["/null"] = true
	dev := md.newMount(ns, devFS, "/")
	add(root, "/dev", dev)
	null := md.newMount(ns, md.newFS("foreign"), "/")
	null.isFile = true
	add(dev, "/null", null)
	add(root, "/tmp", md.newMount(ns, md.newFS("tmp"), "/"))
	return ns
}

func (g *gen) own() int {
	n := 0
	for _, m := range g.md.mounts {
		if !m.base {
			n++
		}
	}
	return n
}

func (g *gen) pick(n int) int { return g.rng.IntN(n) }

func (g *gen) chance(p float64) bool { return g.rng.Float64() < p }

func (g *gen) newName(prefix string) string {
	g.name++
	return fmt.Sprintf("%s%d", prefix, g.name)
}

// script is the text of one namespace's script.
type script struct {
	b      strings.Builder
	indent string
}

func (s *script) line(format string, a ...any) {
	s.b.WriteString(s.indent)
	fmt.Fprintf(&s.b, format, a...)
	s.b.WriteByte('\n')
}

// q quotes a path for the shell (the generator's names never need it, but
// the script stays right if they ever do).
func q(p string) string {
	for _, c := range p {
		if !(c == '/' || c == '.' || c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return "'" + strings.ReplaceAll(p, "'", `'\''`) + "'"
		}
	}
	return p
}

// Paths the scenario never mounts on, unmounts or writes into.
func reserved(l loc) bool {
	return l.path == "/.rt" || strings.HasPrefix(l.path, "/.rt/")
}

// where returns a writable directory to make something new in: mostly
// below /tmp, sometimes elsewhere in the container (its root, /dev).
func (g *gen) where(ns *nspace) (loc, bool) {
	var tmp, other []loc
	for _, l := range g.md.visible(ns) {
		if !l.writable() || reserved(l) {
			continue
		}
		if l.path == "/tmp" || strings.HasPrefix(l.path, "/tmp/") {
			tmp = append(tmp, l)
		} else {
			other = append(other, l)
		}
	}
	if len(other) > 0 && (len(tmp) == 0 || g.chance(0.2)) {
		return other[g.pick(len(other))], true
	}
	if len(tmp) == 0 {
		return loc{}, false
	}
	return tmp[g.pick(len(tmp))], true
}

// existing returns a visible directory (or file) that may be mounted on:
// not a base mount's mountpoint or root, not /.rt.
func (g *gen) existing(ns *nspace, wantDir bool) (loc, bool) {
	var ls []loc
	for _, l := range g.md.visible(ns) {
		if l.isDir != wantDir || reserved(l) || l.m.fs.kind == "foreign" || l.top && l.m.base {
			continue
		}
		ls = append(ls, l)
	}
	if len(ls) == 0 {
		return loc{}, false
	}
	return ls[g.pick(len(ls))], true
}

// mountpoints returns the visible mountpoints whose top mount is one of the
// scenario's (base ones too when base is set: /, /tmp, /dev).
func (g *gen) mountpoints(ns *nspace, base bool) []loc {
	var ls []loc
	for _, l := range g.md.visible(ns) {
		if !l.top || reserved(l) {
			continue
		}
		if l.m.base && !(base && (l.path == "/" || l.path == "/tmp" || l.path == "/dev")) {
			continue
		}
		ls = append(ls, l)
	}
	return ls
}

// dest is where a new mount goes: a new directory (or file), or an
// existing one (an overmount when it is a mountpoint).
func (g *gen) dest(ns *nspace, s *script, isFile bool, prefix string) (p string, m *mount, d string, ok bool) {
	if g.chance(0.7) {
		w, ok := g.where(ns)
		if !ok {
			return "", nil, "", false
		}
		name := g.newName(prefix)
		p = path.Join(w.path, name)
		d = path.Join(w.d, name)
		if isFile {
			s.line("r touch %s", q(p))
			w.m.fs.files[d] = true
		} else {
			s.line("r mkdir %s", q(p))
			w.m.fs.dirs[d] = true
		}
		return p, w.m, d, true
	}
	l, ok := g.existing(ns, !isFile)
	if !ok {
		return "", nil, "", false
	}
	return l.path, l.m, l.d, true
}

func (g *gen) fill(s *script, p string, m *mount) {
	if m.ro || m.fs.ro {
		return
	}
	for i := 1 + g.pick(3); i > 0; i-- {
		switch g.pick(3) {
		case 0, 1:
			name := g.newName("d")
			s.line("r mkdir %s", q(path.Join(p, name)))
			m.fs.dirs[path.Join(m.root, name)] = true
			if g.chance(0.4) {
				sub := g.newName("d")
				s.line("r mkdir %s", q(path.Join(p, name, sub)))
				m.fs.dirs[path.Join(m.root, name, sub)] = true
			}
		case 2:
			name := g.newName("f")
			s.line("r sh -c 'echo %s >%s'", name, q(path.Join(p, name)))
			m.fs.files[path.Join(m.root, name)] = true
		}
	}
}

// atime is relatime two times in three, else noatime or strictatime.
func (g *gen) atime() string {
	x := g.pick(6)
	if x >= len(g.atimes) {
		return "relatime"
	}
	return g.atimes[x]
}

func (g *gen) opTmpfs(ns *nspace, s *script) bool {
	p, dest, d, ok := g.dest(ns, s, false, "t")
	if !ok {
		return false
	}
	if g.own()+g.md.countMount(dest, d, 1) > g.maxMount {
		return false
	}
	// A mount on a mountpoint goes on its top mount's root.
	for c := g.md.childAt(dest, d); c != nil; c = g.md.childAt(dest, d) {
		dest, d = c, c.root
	}
	fs := g.md.newFS("tmpfs")
	m := g.md.newMount(ns, fs, "/")
	opts := []string{}
	if g.chance(0.5) {
		opts = append(opts, fmt.Sprintf("size=%dm", 1+g.pick(64)))
	}
	if g.chance(0.4) {
		opts = append(opts, fmt.Sprintf("mode=%s", []string{"755", "700", "777", "1777", "711"}[g.pick(5)]))
	}
	fs.tmpOpts = strings.Join(opts, ",")
	for _, f := range []struct {
		name string
		set  *bool
	}{{"nosuid", &m.nosuid}, {"nodev", &m.nodev}, {"noexec", &m.noexec}} {
		if g.chance(0.25) {
			opts = append(opts, f.name)
			*f.set = true
		}
	}
	if a := g.atime(); a != "relatime" {
		opts = append(opts, a)
		m.atime = a
	}
	if g.chance(0.05) {
		opts = append(opts, "ro")
		m.ro, fs.ro = true, true
	}
	name := g.newName("tmpfs")
	if len(opts) > 0 {
		s.line("r mount -t tmpfs -o %s %s %s", strings.Join(opts, ","), name, q(p))
	} else {
		s.line("r mount -t tmpfs %s %s", name, q(p))
	}
	g.md.mountTree([]*mount{m}, dest, d)
	// Fill it only where it is what p shows: a copy propagated to a peer
	// can cover p (a mount on a bind of its own parent's peer).
	if g.chance(0.7) && g.shows(ns, p, m) {
		g.fill(s, p, m)
	}
	return true
}

// shows reports whether path p of ns is the root of mount m.
func (g *gen) shows(ns *nspace, p string, m *mount) bool {
	for _, l := range g.md.visible(ns) {
		if l.path == p {
			return l.m == m && l.d == m.root
		}
	}
	return false
}

func (g *gen) opMkdir(ns *nspace, s *script) bool {
	w, ok := g.where(ns)
	if !ok {
		return false
	}
	// fill writes below the mount's root; make a path-relative copy.
	fake := *w.m
	fake.root = w.d
	g.fill(s, w.path, &fake)
	return true
}

func (g *gen) opBind(ns *nspace, s *script, recursive bool) bool {
	var srcs []loc
	for _, l := range g.md.visible(ns) {
		if reserved(l) || l.m.fs.kind == "foreign" || l.m.unbindable || l.path == "/" {
			continue
		}
		if l.m.base && recursive && l.path == "/dev" {
			continue
		}
		srcs = append(srcs, l)
	}
	if len(srcs) == 0 {
		return false
	}
	src := srcs[g.pick(len(srcs))]
	// The tree a bind makes: src's mount cloned at src's dentry, and for
	// rbind every mount below it (not unbindable ones).
	top := g.md.clone(src.m, ns, src.d)
	top.base = false
	top.isFile = !src.isDir
	tree := []*mount{top}
	if recursive {
		var cp func(from, to *mount)
		cp = func(from, to *mount) {
			for _, c := range from.children {
				if c.unbindable || !inside(c.mp, to.root) {
					continue
				}
				n := g.md.clone(c, ns, c.root)
				n.base = false
				n.isFile = c.isFile
				n.parent, n.mp = to, c.mp
				to.children = append(to.children, n)
				tree = append(tree, n)
				cp(c, n)
			}
		}
		cp(src.m, top)
	}
	p, dest, d, ok := g.dest(ns, s, !src.isDir, "b")
	if !ok {
		return false
	}
	for c := g.md.childAt(dest, d); c != nil; c = g.md.childAt(dest, d) {
		dest, d = c, c.root
	}
	if g.own()+g.md.countMount(dest, d, len(tree)) > g.maxMount {
		s.line("# (a bind from %s here would make too many mounts)", src.path)
		return true
	}
	flag := "--bind"
	if recursive {
		flag = "--rbind"
	}
	s.line("r mount %s %s %s", flag, q(src.path), q(p))
	g.md.mountTree(tree, dest, d)
	return true
}

var propModes = []string{"shared", "slave", "private", "unbindable"}

func (g *gen) opPropagation(ns *nspace, s *script) bool {
	ls := g.mountpoints(ns, g.chance(0.15))
	if len(ls) == 0 {
		return false
	}
	l := ls[g.pick(len(ls))]
	mode := propModes[g.pick(len(propModes))]
	recursive := g.chance(0.35) && l.path != "/"
	targets := []*mount{l.m}
	if recursive {
		targets = subtree(l.m)
		s.line("r mount --make-r%s %s", mode, q(l.path))
	} else {
		s.line("r mount --make-%s %s", mode, q(l.path))
	}
	for _, m := range targets {
		g.md.setPropagation(m, mode)
	}
	return true
}

func onoff(b bool, on, off string) string {
	if b {
		return on
	}
	return off
}

func (g *gen) opRemount(ns *nspace, s *script) bool {
	ls := g.mountpoints(ns, false)
	if len(ls) == 0 {
		return false
	}
	l := ls[g.pick(len(ls))]
	m := l.m
	if g.chance(0.12) && m.fs.kind == "tmpfs" && m.root == "/" {
		// A superblock remount: read-only or back to read-write for
		// every mount of it; it sets this mount's flags too.
		ro := !m.fs.ro
		s.line("r mount -o remount,%s,%s,%s,%s,%s %s", onoff(ro, "ro", "rw"), onoff(m.nosuid, "nosuid", "suid"),
			onoff(m.nodev, "nodev", "dev"), onoff(m.noexec, "noexec", "exec"), m.atime, q(l.path))
		m.fs.ro, m.ro = ro, ro
		return true
	}
	m.ro = g.chance(0.4)
	m.nosuid = g.chance(0.3)
	m.nodev = g.chance(0.3)
	m.noexec = g.chance(0.3)
	m.atime = g.atime()
	s.line("r mount -o remount,bind,%s,%s,%s,%s,%s %s", onoff(m.ro, "ro", "rw"), onoff(m.nosuid, "nosuid", "suid"),
		onoff(m.nodev, "nodev", "dev"), onoff(m.noexec, "noexec", "exec"), m.atime, q(l.path))
	return true
}

func (g *gen) opUmount(ns *nspace, s *script) bool {
	ls := g.mountpoints(ns, false)
	if len(ls) == 0 {
		return false
	}
	l := ls[g.pick(len(ls))]
	lazy := len(l.m.children) > 0 || g.chance(0.2)
	pl := g.md.planUmount(l.m, lazy)
	if !g.md.dumpable(pl) {
		return false
	}
	if lazy {
		s.line("r umount -l %s", q(l.path))
	} else {
		s.line("r umount %s", q(l.path))
	}
	g.md.umount(pl)
	return true
}

var nsModes = []string{"private", "shared", "slave", "unchanged"}

func (g *gen) opNamespace(ns *nspace, s *script) bool {
	if ns.depth >= 2 || g.nsCount >= 4 {
		return false
	}
	copies := 0
	for _, m := range g.md.inNS(ns) {
		if !m.base {
			copies++
		}
	}
	if g.own()+copies > g.maxMount {
		return false
	}
	g.nsCount++
	id := g.nsCount
	mode := nsModes[g.pick(len(nsModes))]
	child := g.md.copyNamespace(ns, id)
	switch mode {
	case "private", "shared", "slave":
		for _, m := range subtree(child.root) {
			g.md.setPropagation(m, mode)
		}
	}
	name := fmt.Sprintf("ns%d", id)
	s.line("# a nested mount namespace, --propagation %s, whose process stays alive", mode)
	s.line("cat >/.rt/%s.sh <<'EOF_%s'", name, name)
	cs := &script{}
	cs.line("exec >>/.rt/%s.log 2>&1", name)
	cs.line("%s", rfunc)
	g.session(child, cs, 2+g.pick(6))
	cs.line("touch /.rt/%s.ready", name)
	cs.line("exec sleep 100001 </dev/null >/dev/null 2>&1")
	s.b.WriteString(cs.b.String())
	s.line("EOF_%s", name)
	s.line("unshare --mount --propagation %s bash /.rt/%s.sh </dev/null >/dev/null 2>&1 &", mode, name)
	s.line("for _ in $(seq 500); do [ -e /.rt/%s.ready ] && break; sleep 0.01; done", name)
	s.line("[ -e /.rt/%s.ready ] || echo 'randtree: op failed: %s never got ready'", name, name)
	return true
}

const rfunc = `r() { "$@" || echo "randtree: op failed ($?): $*"; }`

// session runs up to n operations in ns.
func (g *gen) session(ns *nspace, s *script, n int) {
	type op struct {
		weight int
		run    func() bool
	}
	ops := []op{
		{6, func() bool { return g.opTmpfs(ns, s) }},
		{2, func() bool { return g.opMkdir(ns, s) }},
		{5, func() bool { return g.opBind(ns, s, false) }},
		{2, func() bool { return g.opBind(ns, s, true) }},
		{6, func() bool { return g.opPropagation(ns, s) }},
		{2, func() bool { return g.opRemount(ns, s) }},
		{2, func() bool { return g.opUmount(ns, s) }},
		{1, func() bool { return g.opNamespace(ns, s) }},
	}
	total := 0
	for _, o := range ops {
		total += o.weight
	}
	done := 0
	for tries := 0; done < n && tries < 20*n; tries++ {
		if g.own() >= g.target && done > 0 {
			break
		}
		x := g.pick(total)
		for _, o := range ops {
			if x < o.weight {
				if o.run() {
					done++
					g.ops++
				}
				break
			}
			x -= o.weight
		}
	}
}

func generate(seed uint64, maxMounts int, strictatime bool) string {
	g := &gen{rng: rand.New(rand.NewPCG(seed, 0x6d6e747632)), md: &model{}, maxMount: maxMounts,
		atimes: []string{"noatime", "strictatime"}}
	if !strictatime {
		// The same draws, relatime where strictatime would be.
		g.atimes = []string{"noatime"}
	}
	g.target = 5 + g.pick(maxMounts-4)
	ns := g.baseNamespace()
	g.nsCount = 1
	body := &script{}
	g.session(ns, body, 40)
	var out strings.Builder
	fmt.Fprintf(&out, "# randtree -seed %d: %d operations, %d mount namespaces, about %d mounts of its own (generated by hack/randtree)\n",
		seed, g.ops, g.nsCount, g.own())
	out.WriteString("cd /\nmkdir -p /.rt\n" + rfunc + "\n")
	out.WriteString(body.b.String())
	return out.String()
}

func main() {
	seed := flag.Uint64("seed", 1, "seed of the PRNG: the same seed gives the same script")
	maxMounts := flag.Int("max-mounts", 40, "at most this many mounts of the scenario's own, every namespace counted")
	noStrict := flag.Bool("no-strictatime", false, "never strictatime (relatime instead), to see what else fails where strictatime hides it")
	flag.Parse()
	if *maxMounts < 5 {
		fmt.Fprintln(os.Stderr, "randtree: -max-mounts must be at least 5")
		os.Exit(2)
	}
	fmt.Print(generate(*seed, *maxMounts, !*noStrict))
}

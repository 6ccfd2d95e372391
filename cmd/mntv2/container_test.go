package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// A test container: a process tree whose mount namespaces are built by a
// script of mount operations, then pivot_rooted into a tmpfs, like the
// fixtures' containers. The test binary itself plays the container's
// processes (TestMain runs containerMain when MNTV2_CT is set).

// ctOp is one mount operation of a container script. Paths are relative to
// the container root.
type ctOp struct {
	Op    string `json:"op"` // tmpfs, mkdir, file, bind, shared, slave, private, unbindable, flags, umount
	Path  string `json:"path"`
	From  string `json:"from,omitempty"`
	Name  string `json:"name,omitempty"`
	Flags uint64 `json:"flags,omitempty"` // MS_RDONLY, MS_NOSUID, ... for flags
}

// ctScript builds one container: ops in the first namespace, then each
// further namespace is a copy of the first (propagation kept) that runs its
// own ops.
type ctScript struct {
	Ops    []ctOp   `json:"ops"`
	Others [][]ctOp `json:"others,omitempty"`
}

// shell renders a script as the commands a person would type.
func (s ctScript) shell() string {
	var b strings.Builder
	b.WriteString("# in a new private mount namespace; CT is the container root (a tmpfs)\n")
	render := func(ops []ctOp) {
		for _, o := range ops {
			b.WriteString(o.shell() + "\n")
		}
	}
	render(s.Ops)
	for i, ops := range s.Others {
		fmt.Fprintf(&b, "# namespace %d: a copy of the first (clone(CLONE_NEWNS), propagation kept)\n", i+2)
		render(ops)
	}
	return b.String()
}

func (o ctOp) shell() string {
	p := "$CT" + o.Path
	switch o.Op {
	case "tmpfs":
		return fmt.Sprintf("mkdir -p %s && mount -t tmpfs %s %s", p, o.Name, p)
	case "mkdir":
		return "mkdir -p " + p
	case "file":
		return "touch " + p
	case "bind":
		return fmt.Sprintf("mount --bind $CT%s %s", o.From, p)
	case "shared", "slave", "private", "unbindable":
		return fmt.Sprintf("mount --make-%s %s", o.Op, p)
	case "flags":
		return fmt.Sprintf("mount -o remount,bind,%s %s", flagWords(o.Flags), p)
	case "umount":
		return "umount " + p
	}
	return "# ?" + o.Op
}

func flagWords(f uint64) string {
	w := []string{}
	for _, x := range []struct {
		f    uint64
		name string
	}{{unix.MS_RDONLY, "ro"}, {unix.MS_NOSUID, "nosuid"}, {unix.MS_NODEV, "nodev"}, {unix.MS_NOEXEC, "noexec"}, {unix.MS_NOATIME, "noatime"}} {
		if f&x.f != 0 {
			w = append(w, x.name)
		}
	}
	if len(w) == 0 {
		return "rw"
	}
	return strings.Join(w, ",")
}

// run applies an op below root. Failures are expected (the generator does
// not model the kernel) and only reported.
func (o ctOp) run(root string) error {
	p := root + o.Path
	switch o.Op {
	case "tmpfs":
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		return unix.Mount(o.Name, p, "tmpfs", 0, "")
	case "mkdir":
		return os.MkdirAll(p, 0o755)
	case "file":
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		return f.Close()
	case "bind":
		return unix.Mount(root+o.From, p, "", unix.MS_BIND, "")
	case "shared":
		return unix.Mount("", p, "", unix.MS_SHARED, "")
	case "slave":
		return unix.Mount("", p, "", unix.MS_SLAVE, "")
	case "private":
		return unix.Mount("", p, "", unix.MS_PRIVATE, "")
	case "unbindable":
		return unix.Mount("", p, "", unix.MS_UNBINDABLE, "")
	case "flags":
		return unix.Mount("", p, "", uintptr(unix.MS_REMOUNT|unix.MS_BIND|o.Flags), "")
	case "umount":
		return unix.Unmount(p, 0)
	}
	return fmt.Errorf("unknown op %q", o.Op)
}

// container is a running test container.
type container struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	Pid   int
}

// startContainer runs script in new mount namespaces (copies of this one,
// which must be private) and returns once every process has pivot_rooted.
func startContainer(t *testing.T, s ctScript) *container {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(dir, "script.json")
	b, _ := json.Marshal(s)
	if err := os.WriteFile(script, b, 0o644); err != nil {
		t.Fatal(err)
	}
	ctRoot := filepath.Join(dir, "ct")
	if err := os.Mkdir(ctRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	c, err := spawnCT("init", script, ctRoot, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.stop() })
	return c
}

func spawnCT(role, script, root string, index int) (*container, error) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "MNTV2_CT="+role, "MNTV2_CT_SCRIPT="+script, "MNTV2_CT_ROOT="+root,
		fmt.Sprintf("MNTV2_CT_INDEX=%d", index))
	// Cloneflags, not Unshareflags: a copy of the namespace with its
	// propagation kept (Unshareflags would make it all private).
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &container{cmd: cmd, stdin: in, Pid: cmd.Process.Pid}
	c.out = bufio.NewReader(out)
	return c, c.wait("ready")
}

func (c *container) wait(word string) error {
	line, err := c.out.ReadString('\n')
	if strings.TrimSpace(line) != word {
		c.stop()
		return fmt.Errorf("test container: want %q, got %q (%v)", word, line, err)
	}
	return nil
}

func (c *container) stop() {
	if c.cmd.ProcessState == nil {
		c.stdin.Close()
		_ = c.cmd.Wait()
	}
}

// containerMain is a container process: it builds its namespace, pivot_roots
// into the container root, says "ready" and waits for its stdin to close.
func containerMain() {
	role, root := os.Getenv("MNTV2_CT"), os.Getenv("MNTV2_CT_ROOT")
	var s ctScript
	b, err := os.ReadFile(os.Getenv("MNTV2_CT_SCRIPT"))
	if err == nil {
		err = json.Unmarshal(b, &s)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "container:", err)
		os.Exit(1)
	}
	in := bufio.NewReader(os.Stdin)
	var kids []*container
	if role == "init" {
		if err := unix.Mount("ctroot", root, "tmpfs", 0, ""); err != nil {
			fmt.Fprintln(os.Stderr, "container root:", err)
			os.Exit(1)
		}
		for _, o := range s.Ops {
			_ = o.run(root)
		}
		// The other namespaces: copies of this one, made now, each running
		// its ops in turn (their mounts propagate to the peers here).
		for i := range s.Others {
			k, err := spawnCT("other", os.Getenv("MNTV2_CT_SCRIPT"), root, i)
			if err != nil {
				fmt.Fprintln(os.Stderr, "container:", err)
				os.Exit(1)
			}
			kids = append(kids, k)
		}
		for _, k := range kids {
			fmt.Fprintln(k.stdin, "go")
			if err := k.wait("done"); err != nil {
				fmt.Fprintln(os.Stderr, "container:", err)
				os.Exit(1)
			}
		}
	} else {
		fmt.Println("ready")
		if line, _ := in.ReadString('\n'); strings.TrimSpace(line) != "go" {
			os.Exit(1)
		}
		i := 0
		fmt.Sscan(os.Getenv("MNTV2_CT_INDEX"), &i)
		for _, o := range s.Others[i] {
			_ = o.run(root)
		}
	}
	if err := pivotInto(root); err != nil {
		fmt.Fprintln(os.Stderr, "container: pivot_root:", err)
		os.Exit(1)
	}
	if role == "init" {
		fmt.Println("ready")
	} else {
		fmt.Println("done")
	}
	_, _ = io.Copy(io.Discard, in)
	for _, k := range kids {
		k.stop()
	}
	os.Exit(0)
}

func pivotInto(root string) error {
	if err := unix.Chdir(root); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return err
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return err
	}
	return unix.Chdir("/")
}

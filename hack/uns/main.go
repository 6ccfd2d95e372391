// Command uns starts a container whose init runs in its own user namespace,
// as LXC/Incus unprivileged containers, Kubernetes pods with hostUsers:
// false and podman --userns run, for the e2e scenarios (hack/e2e-criu.sh);
// or holds a user namespace open for mntv2 restore --userns. It needs no
// newuidmap: it runs as host root and writes the maps itself.
//
//	uns -map 0:100000:65536 [-idmap-tmpfs CTPATH[:UIDMAP]]... [-idmap-bind HOSTPATH:CTPATH[:UIDMAP]]... -root ROOT -- CMD ARGS...
//	uns -hold -map 0:100000:65536
//
// The first form starts CMD as pid 1 of new user, mount and pid namespaces
// (uid and gid maps from -map, setgroups denied). Before CMD runs, uns
// attaches idmapped mounts below ROOT (the container's future root) in the
// child's mount namespace: for -idmap-tmpfs a new tmpfs, for -idmap-bind a
// clone of HOSTPATH (a Kubernetes-style idmapped volume), each idmapped
// with UIDMAP (default: the -map one). uns then waits for CMD and exits
// with its status. The second form starts a process in a new user
// namespace with the maps, prints its pid and ends when stdin closes.
//
// A map is CONTAINER:HOST:COUNT[,CONTAINER:HOST:COUNT...], for uids and
// gids alike.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Hidden modes of the re-executed binary: the container's init waiting to
// be released (fd 3), and a process that only holds a user namespace.
const (
	modeInit = "__uns-init"
	modeWait = "__uns-wait"
)

// list is a repeatable flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case modeInit:
			die(initWait(os.Args[2:]))
		case modeWait:
			_, _ = io.Copy(io.Discard, os.Stdin)
			return
		}
	}
	var tmpfses, binds list
	mapFlag := flag.String("map", "", "uid and gid map CONTAINER:HOST:COUNT[,...] (required)")
	root := flag.String("root", "", "the container's future root (its idmapped mounts go below it)")
	hold := flag.Bool("hold", false, "hold a user namespace with -map: print its pid, end when stdin closes")
	flag.Var(&tmpfses, "idmap-tmpfs", "CTPATH[:UIDMAP]: an idmapped tmpfs at ROOT/CTPATH (repeatable)")
	flag.Var(&binds, "idmap-bind", "HOSTPATH:CTPATH[:UIDMAP]: an idmapped clone of HOSTPATH at ROOT/CTPATH (repeatable)")
	flag.Parse()
	m, err := parseMap(*mapFlag)
	die(err)
	if *hold {
		die(holdUserns(m))
		return
	}
	if *root == "" || flag.NArg() == 0 {
		die(errors.New("usage: uns -map MAP [-idmap-tmpfs SPEC] [-idmap-bind SPEC] -root ROOT -- CMD [ARG]"))
	}
	die(run(m, *root, tmpfses, binds, flag.Args()))
}

func die(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "uns:", err)
		os.Exit(1)
	}
}

// parseMap reads CONTAINER:HOST:COUNT[,...].
func parseMap(s string) ([]syscall.SysProcIDMap, error) {
	var m []syscall.SysProcIDMap
	for _, e := range strings.Split(s, ",") {
		f := strings.Split(e, ":")
		if len(f) != 3 {
			return nil, fmt.Errorf("map %q: want CONTAINER:HOST:COUNT[,...]", s)
		}
		var n [3]int
		for i := range f {
			v, err := strconv.Atoi(f[i])
			if err != nil || v < 0 {
				return nil, fmt.Errorf("map %q: %q is not a number", s, f[i])
			}
			n[i] = v
		}
		m = append(m, syscall.SysProcIDMap{ContainerID: n[0], HostID: n[1], Size: n[2]})
	}
	return m, nil
}

// hostRoot is the host id of the container's 0.
func hostRoot(m []syscall.SysProcIDMap) int {
	for _, e := range m {
		if e.ContainerID == 0 {
			return e.HostID
		}
	}
	return 0
}

// inUserns returns a command that runs this binary in mode with args in
// a new user namespace with maps m (plus extra namespaces in flags).
func inUserns(m []syscall.SysProcIDMap, flags uintptr, args ...string) *exec.Cmd {
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | flags,
		UidMappings: m, GidMappings: m,
		// Root of the new namespace (the host id mapped to 0), with
		// capabilities there after exec.
		Credential: &syscall.Credential{Uid: 0, Gid: 0},
	}
	return cmd
}

// holdUserns is -hold: the user namespace lives in a child that reads
// this process's stdin until it closes.
func holdUserns(m []syscall.SysProcIDMap) error {
	cmd := inUserns(m, 0, modeWait)
	cmd.Stdin = os.Stdin
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("new user namespace: %w", err)
	}
	fmt.Println(cmd.Process.Pid)
	return cmd.Wait()
}

// usernsFd opens a user namespace with maps m: the container's own when
// m is nil, else a new one (its holder is gone once the fd is open).
func usernsFd(child int, m []syscall.SysProcIDMap) (int, error) {
	if m == nil {
		return unix.Open(fmt.Sprintf("/proc/%d/ns/user", child), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	cmd := inUserns(m, 0, modeWait)
	in, err := cmd.StdinPipe()
	if err != nil {
		return -1, err
	}
	if err := cmd.Start(); err != nil {
		return -1, fmt.Errorf("new user namespace: %w", err)
	}
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	in.Close()
	if werr := cmd.Wait(); err == nil && werr != nil {
		err = werr
	}
	return fd, err
}

// run starts the container, attaches its idmapped mounts, releases it
// and waits for it.
func run(m []syscall.SysProcIDMap, root string, tmpfses, binds list, argv []string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd := inUserns(m, syscall.CLONE_NEWNS|syscall.CLONE_NEWPID, append([]string{modeInit}, argv...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{r}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s in new namespaces: %w", argv[0], err)
	}
	r.Close()
	if err := mountAll(cmd.Process.Pid, hostRoot(m), root, tmpfses, binds); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return err
	}
	// Released: CMD runs.
	if _, err := w.Write([]byte{1}); err != nil {
		return err
	}
	w.Close()
	err = cmd.Wait()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		os.Exit(exit.ExitCode())
	}
	return err
}

// mountAll attaches the -idmap-tmpfs and -idmap-bind mounts.
func mountAll(child, owner int, root string, tmpfses, binds list) error {
	for _, t := range tmpfses {
		ctpath, mapText, _ := strings.Cut(t, ":")
		fsfd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
		if err != nil {
			return fmt.Errorf("fsopen tmpfs: %w", err)
		}
		err = unix.FsconfigSetString(fsfd, "source", filepath.Base(ctpath))
		if err == nil {
			err = unix.FsconfigCreate(fsfd)
		}
		mfd := -1
		if err == nil {
			mfd, err = unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
		}
		unix.Close(fsfd)
		if err != nil {
			return fmt.Errorf("tmpfs for %s: %w", ctpath, err)
		}
		if err := idmapAttach(child, owner, mfd, mapText, root, ctpath); err != nil {
			return err
		}
	}
	for _, b := range binds {
		f := strings.SplitN(b, ":", 3)
		if len(f) < 2 {
			return fmt.Errorf("-idmap-bind %q: want HOSTPATH:CTPATH[:UIDMAP]", b)
		}
		mfd, err := unix.OpenTree(unix.AT_FDCWD, f[0], unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		if err != nil {
			return fmt.Errorf("open_tree %s: %w", f[0], err)
		}
		f = append(f, "")
		if err := idmapAttach(child, owner, mfd, f[2], root, f[1]); err != nil {
			return err
		}
	}
	return nil
}

// idmapAttach idmaps the detached mount mfd with mapText's user namespace
// (the child's if empty) and attaches it at root/ctpath in the child's
// mount namespace; it closes mfd.
func idmapAttach(child, owner, mfd int, mapText, root, ctpath string) error {
	defer unix.Close(mfd)
	var m []syscall.SysProcIDMap
	if mapText != "" {
		var err error
		if m, err = parseMap(mapText); err != nil {
			return err
		}
	}
	us, err := usernsFd(child, m)
	if err != nil {
		return fmt.Errorf("user namespace for %s: %w", ctpath, err)
	}
	err = unix.MountSetattr(mfd, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(us)})
	unix.Close(us)
	if err != nil {
		return fmt.Errorf("mount_setattr MOUNT_ATTR_IDMAP for %s: %w", ctpath, err)
	}
	target := filepath.Join(root, ctpath)
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, in the child's mount namespace,
		// ends with the goroutine.
		runtime.LockOSThread()
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_FS); err != nil {
				return fmt.Errorf("unshare CLONE_FS: %w", err)
			}
			ns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/mnt", child), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(ns)
			if err := unix.Setns(ns, unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("setns to the container's mount namespace: %w", err)
			}
			// The mountpoint belongs to the container's root, as a
			// runtime makes it.
			if _, err := os.Stat(target); errors.Is(err, os.ErrNotExist) {
				if err := os.MkdirAll(target, 0o755); err != nil {
					return err
				}
				if err := os.Lchown(target, owner, owner); err != nil {
					return err
				}
			}
			if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
				return fmt.Errorf("move_mount to %s: %w", target, err)
			}
			return nil
		}()
	}()
	return <-errc
}

// initWait is the container's init before CMD: it waits for uns to
// release it (one byte on fd 3; end of file means uns failed) and execs
// CMD as pid 1.
func initWait(argv []string) error {
	rel := os.NewFile(3, "release")
	b := make([]byte, 1)
	if n, _ := rel.Read(b); n != 1 {
		os.Exit(1)
	}
	rel.Close()
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return err
	}
	return syscall.Exec(path, argv, os.Environ())
}

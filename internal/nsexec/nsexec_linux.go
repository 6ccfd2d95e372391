// Package nsexec does what a Go process cannot: enter a user namespace. The
// kernel refuses setns(CLONE_NEWUSER) to a multithreaded process, and the
// Go runtime has threads before any Go code runs; so this package re-runs
// the program with _MNTV2_NSEXEC set, and a C constructor (which runs
// before the Go runtime starts, while the process has one thread) does
// the work and exits (as runc's nsenter does). Any program that links this
// package is its own helper.
package nsexec

/*
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif

static void nsexec_fail(const char *what) {
	dprintf(2, "nsexec: %s: %s\n", what, strerror(errno));
	_exit(1);
}

// nsexec_copy writes the file at path to stdout.
static void nsexec_copy(const char *path) {
	char buf[4096];
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		nsexec_fail(path);
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		if (write(1, buf, n) != n)
			nsexec_fail("write");
	if (n < 0)
		nsexec_fail(path);
	close(fd);
}

// nsexec_sendfd sends fd over the socket sock.
static void nsexec_sendfd(int sock, int fd) {
	char cbuf[CMSG_SPACE(sizeof(int))], b = 0;
	struct iovec iov = {.iov_base = &b, .iov_len = 1};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	struct cmsghdr *c;

	memset(cbuf, 0, sizeof(cbuf));
	c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &msg, 0) < 0)
		nsexec_fail("sendmsg");
}

// The modes (fds as the Go side passes them):
//   maps  3 = a user namespace: prints its uid_map, a line "-", its gid_map
//   mkns  3 = a user namespace, 4 = a mount namespace, 5 = a socket: a new
//         mount namespace, a copy of 4 owned by 3, sent over 5
//   hold  waits until stdin ends (a process that keeps its namespaces)
//   fsopen 3 = a user namespace, 4 = a socket: inside the user namespace (as
//         its root where it maps one), answers each message on 4 (a
//         filesystem type) with an fsopen fd of it, or a message of the
//         errno; ends when 4 does
__attribute__((constructor)) static void nsexec_main(void) {
	const char *mode = getenv("_MNTV2_NSEXEC");
	char b;

	if (mode == NULL)
		return;
	if (strcmp(mode, "maps") == 0) {
		if (setns(3, CLONE_NEWUSER) < 0)
			nsexec_fail("setns(CLONE_NEWUSER)");
		nsexec_copy("/proc/self/uid_map");
		if (write(1, "-\n", 2) != 2)
			nsexec_fail("write");
		nsexec_copy("/proc/self/gid_map");
		_exit(0);
	}
	if (strcmp(mode, "mkns") == 0) {
		int fd;

		// The mount namespace first: entering it needs privilege over
		// its owner, which this process has only before it enters the
		// user namespace.
		if (setns(4, CLONE_NEWNS) < 0)
			nsexec_fail("setns(CLONE_NEWNS)");
		if (setns(3, CLONE_NEWUSER) < 0)
			nsexec_fail("setns(CLONE_NEWUSER)");
		if (unshare(CLONE_NEWNS) < 0)
			nsexec_fail("unshare(CLONE_NEWNS)");
		fd = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			nsexec_fail("open /proc/self/ns/mnt");
		nsexec_sendfd(5, fd);
		_exit(0);
	}
	if (strcmp(mode, "fsopen") == 0) {
		char type[256];
		ssize_t n;

		if (setns(3, CLONE_NEWUSER) < 0)
			nsexec_fail("setns(CLONE_NEWUSER)");
		// fsopen needs privilege over the owner of this process's
		// mount namespace: one of the user namespace's own.
		if (unshare(CLONE_NEWNS) < 0)
			nsexec_fail("unshare(CLONE_NEWNS)");
		// The owner a tmpfs root gets is the opener's fsuid: the
		// namespace's root, as for a mount made by the container.
		(void)!setresgid(0, 0, 0);
		(void)!setresuid(0, 0, 0);
		close(3);
		while ((n = recv(4, type, sizeof(type) - 1, 0)) > 0) {
			int fd;

			type[n] = 0;
			fd = syscall(SYS_fsopen, type, 1); // FSOPEN_CLOEXEC
			if (fd < 0) {
				int e = errno;

				if (send(4, &e, sizeof(e), 0) < 0)
					nsexec_fail("send");
				continue;
			}
			nsexec_sendfd(4, fd);
			close(fd);
		}
		_exit(0);
	}
	if (strcmp(mode, "hold") == 0) {
		while (read(0, &b, 1) > 0 || errno == EINTR)
			;
		_exit(0);
	}
	dprintf(2, "nsexec: unknown mode %s\n", mode);
	_exit(2);
}
*/
import "C"

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/mntv2/mntv2/images"
	"golang.org/x/sys/unix"
)

const envMode = "_MNTV2_NSEXEC"

// helper is this program run again in mode with extra fds (3, 4, ...):
// duplicates of fds, closed by the returned func once the helper started.
func helper(mode string, fds ...int) (*exec.Cmd, func(), error) {
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"mntv2-nsexec"}
	cmd.Env = []string{envMode + "=" + mode}
	done := func() {
		for _, f := range cmd.ExtraFiles {
			f.Close()
		}
	}
	for _, fd := range fds {
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			done()
			return nil, nil, fmt.Errorf("dup: %w", err)
		}
		cmd.ExtraFiles = append(cmd.ExtraFiles, os.NewFile(uintptr(dup), "fd"))
	}
	return cmd, done, nil
}

// Maps reads the uid and gid maps of the user namespace userns (an nsfs
// fd), as a process inside it sees them (relative to its parent).
func Maps(userns int) (images.IDMaps, error) {
	cmd, done, err := helper("maps", userns)
	if err != nil {
		return images.IDMaps{}, err
	}
	defer done()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return images.IDMaps{}, fmt.Errorf("read the maps of a user namespace: %v: %s", err, strings.TrimSpace(errb.String()))
	}
	uid, gid, ok := strings.Cut(out.String(), "-\n")
	if !ok {
		return images.IDMaps{}, fmt.Errorf("read the maps of a user namespace: %q", out.String())
	}
	var m images.IDMaps
	if m.UID, err = ParseMap(uid); err == nil {
		m.GID, err = ParseMap(gid)
	}
	return m, err
}

// ParseMap reads a /proc/PID/uid_map.
func ParseMap(s string) ([]images.IDExtent, error) {
	var out []images.IDExtent
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 3 {
			return nil, fmt.Errorf("id map line %q", line)
		}
		var v [3]uint32
		for i := range f {
			n, err := strconv.ParseUint(f[i], 10, 32)
			if err != nil {
				return nil, fmt.Errorf("id map line %q: %w", line, err)
			}
			v[i] = uint32(n)
		}
		out = append(out, images.IDExtent{First: v[0], Lower: v[1], Count: v[2]})
	}
	return out, nil
}

// NewMountNamespace makes a mount namespace owned by the user namespace
// userns, a copy of the mount namespace mntns, and returns an nsfs fd of
// it. Every mount of the copy is locked (copied into a less privileged
// user namespace: MNT_LOCKED, and its flags MNT_LOCK_*), as the kernel
// does for a container runtime's unshare.
func NewMountNamespace(userns, mntns int) (int, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socketpair: %w", err)
	}
	defer unix.Close(pair[0])
	cmd, done, err := helper("mkns", userns, mntns, pair[1])
	unix.Close(pair[1])
	if err != nil {
		return -1, err
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	err = cmd.Start()
	done()
	if err != nil {
		return -1, err
	}
	fd, rerr := recvFd(pair[0])
	werr := cmd.Wait()
	if rerr != nil || werr != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("a mount namespace owned by the user namespace: %v: %s", errors.Join(werr, rerr), strings.TrimSpace(errb.String()))
	}
	return fd, nil
}

func recvFd(sock int) (int, error) {
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return -1, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return -1, fmt.Errorf("no fd received (%v)", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return -1, fmt.Errorf("no fd received (%v)", err)
	}
	return fds[0], nil
}

// NewUserNamespace makes a user namespace with maps m (as seen from this
// process's user namespace) and returns an nsfs fd of it; the process that
// made it is gone when this returns.
func NewUserNamespace(m images.IDMaps) (int, error) {
	conv := func(es []images.IDExtent) []syscall.SysProcIDMap {
		out := make([]syscall.SysProcIDMap, len(es))
		for i, e := range es {
			out[i] = syscall.SysProcIDMap{ContainerID: int(e.First), HostID: int(e.Lower), Size: int(e.Count)}
		}
		return out
	}
	cmd, _, err := helper("hold")
	if err != nil {
		return -1, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER, UidMappings: conv(m.UID), GidMappings: conv(m.GID),
		GidMappingsEnableSetgroups: false, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return -1, err
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		stdin.Close()
		return -1, fmt.Errorf("a user namespace with maps %s: %w", m, err)
	}
	fd, err := unix.Open("/proc/"+strconv.Itoa(cmd.Process.Pid)+"/ns/user", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	stdin.Close()
	werr := cmd.Wait()
	if err != nil {
		return -1, fmt.Errorf("a user namespace with maps %s: %w", m, err)
	}
	if werr != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("a user namespace with maps %s: %v: %s", m, werr, strings.TrimSpace(errb.String()))
	}
	return fd, nil
}

// Opener opens filesystem contexts (fsopen) inside a user namespace: a
// superblock made from one is owned by that namespace (its s_user_ns: the
// namespace's root may remount it, and a tmpfs root is its root's), as one
// a container made itself. The other steps (fsconfig, create, fsmount)
// need no helper: the kernel takes the owner from the context. Safe for
// concurrent use.
type Opener struct {
	mu   sync.Mutex
	sock int
	cmd  *exec.Cmd
	errb bytes.Buffer
}

// NewOpener starts an Opener for the user namespace userns (an nsfs fd).
func NewOpener(userns int) (*Opener, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	cmd, done, err := helper("fsopen", userns, pair[1])
	unix.Close(pair[1])
	if err != nil {
		unix.Close(pair[0])
		return nil, err
	}
	o := &Opener{sock: pair[0], cmd: cmd}
	// No Pdeathsig: the thread that starts it may end first. The
	// helper ends with its socket, when Close or this process does.
	cmd.Stderr = &o.errb
	err = cmd.Start()
	done()
	if err != nil {
		unix.Close(pair[0])
		return nil, fmt.Errorf("a helper in the user namespace: %w", err)
	}
	return o, nil
}

// Fsopen is fsopen(fstype, FSOPEN_CLOEXEC) inside the user namespace.
func (o *Opener) Fsopen(fstype string) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := unix.Send(o.sock, []byte(fstype), 0); err != nil {
		return -1, o.helperErr(err)
	}
	buf := make([]byte, 4)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(o.sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
	switch {
	case err != nil:
		return -1, o.helperErr(err)
	case oobn > 0:
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err == nil && len(msgs) == 1 {
			if fds, err := unix.ParseUnixRights(&msgs[0]); err == nil && len(fds) == 1 {
				return fds[0], nil
			}
		}
		return -1, fmt.Errorf("fsopen in the user namespace: a bad answer (%v)", err)
	case n == 4:
		return -1, syscall.Errno(binary.NativeEndian.Uint32(buf))
	default:
		return -1, o.helperErr(errors.New("the helper ended"))
	}
}

func (o *Opener) helperErr(err error) error {
	return fmt.Errorf("fsopen in the user namespace: %w %s", err, strings.TrimSpace(o.errb.String()))
}

// Close ends the helper.
func (o *Opener) Close() error {
	unix.Close(o.sock)
	return o.cmd.Wait()
}

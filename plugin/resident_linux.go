package plugin

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/restore"
	"golang.org/x/sys/unix"
)

// The resident hook. CRIU runs its action script once per action, and each
// start of a Go program costs milliseconds (the runtime, the packages'
// init, the page faults of a 10 MB binary): three starts (pre-restore, its
// watcher, post-restore) were most of what the hook added to a restore.
// So mntv2 as CRIU's action script (cmd/mntv2) forks before the Go runtime
// starts, at pre-restore: the parent waits for the child's status on a pipe
// and exits with it, and CRIU goes on as soon as the images are rewritten.
// The child stays, as the watcher of the images, and serves post-restore:
// there the action script, still before the Go runtime starts, connects to
// ResidentName, sends its environment with its stdin, stdout and stderr
// (SCM_RIGHTS) in one SOCK_SEQPACKET message, and exits with the one byte
// the resident answers after residentTaken. A connection closed before
// residentTaken means: do it yourself (the action then runs in its own
// process, as without a resident); closed after it, the resident died
// mid-way: the action script puts the original images back and fails.

// residentTaken is the resident's first answer: the request is its.
const residentTaken = 'A'

// ResidentName is the abstract unix socket the resident hook of the CRIU
// process criu listens on (cmd/mntv2's C side builds the same name).
func ResidentName(criu int) string { return "mntv2-hook-" + strconv.Itoa(criu) }

// Resident runs pre-restore for the CRIU process criu, reports its exit
// status on report (the pipe the action script's parent half waits on),
// then, if pre-restore succeeded, watches the images and serves
// post-restore. It returns this process's exit status. With prepared set
// (report is then nil), the action script's C half has made the rewrite
// already (see Prepare) under that token, and CRIU has gone on: the
// resident only takes it over.
func Resident(getenv func(string) string, s Settings, log *slog.Logger, criu int, report *os.File, prepared string) int {
	if prepared != "" {
		return residentPrepared(s, log, criu, prepared, getenv(EnvImageDir))
	}
	status := func(code int) int {
		_, _ = report.Write([]byte{byte(code)})
		report.Close()
		return code
	}
	if s.Disabled {
		return status(0)
	}
	fail := func(err error) int {
		log.Error("aborting the restore", "action", "pre-restore", "err", err)
		return status(1)
	}
	d, err := images.Open(getenv(EnvImageDir))
	if err != nil {
		return fail(fmt.Errorf("pre-restore: %w", err))
	}
	defer d.Close()
	s.Log = log
	pidfd, lfd, err := residentListen(criu)
	if err != nil {
		// No resident: the classic hook (a watcher process, and
		// post-restore in a process of its own).
		log.Debug("pre-restore: no resident hook, a watcher instead", "err", err)
		if err := PreRestore(d, criu, s); err != nil {
			return fail(err)
		}
		return status(0)
	}
	defer unix.Close(pidfd)
	defer unix.Close(lfd)
	// This process is the watcher: if it dies while it rewrites, the
	// action script's parent half puts the originals back; if that half
	// dies (CRIU's action script was killed), the rewrite stops and is
	// undone.
	stop, unwatch := whileAlive(os.Getppid(), pidfd)
	s.Stop = stop
	token := NewToken()
	pre, err := preRestore(d, criu, token, getenv, s)
	unwatch()
	s.Stop = nil
	if err != nil {
		// CRIU aborts the restore; this process is the watcher.
		if _, rerr := Recover(d); rerr != nil {
			log.Error("pre-restore: putting the original images back failed: run mntv2 criu-images restore DIR", "err", rerr)
		}
		return fail(err)
	}
	if _, err := report.Write([]byte{0}); err != nil {
		// The action script is gone: CRIU aborts the restore.
		if _, rerr := Recover(d); rerr != nil {
			log.Error("pre-restore: the action script died; putting the original images back failed: run mntv2 criu-images restore DIR", "err", rerr)
		}
		return 1
	}
	report.Close()
	// CRIU's stdio are not this process's any more: a runtime that reads
	// them to their end must not wait for it.
	detachStdio()
	return residentServe(d, s, log, criu, pidfd, lfd, token, pre)
}

// residentServe makes the completion of pre ready (what post-restore can
// do before the restored namespaces exist) while CRIU restores the tasks,
// then serves post-restore.
func residentServe(d *images.Dir, s Settings, log *slog.Logger, criu, pidfd, lfd int, token string, pre *rewritten) int {
	if pre != nil {
		pre.prepare(d, s.Config, log)
		defer func() {
			if pre.live != nil {
				pre.live.Close()
			}
		}()
	}
	r := &resident{d: d, s: s, log: log, criu: criu, pidfd: pidfd, pre: pre}
	if err := r.serve(lfd, token); err != nil {
		log.Error("resident hook", "err", err)
		return 1
	}
	return 0
}

// residentPrepared is the resident of a rewrite the action script's C
// half made (see Prepare): CRIU reads the images already. It watches them
// as any resident does and serves post-restore, with the rewrite taken
// from the manifest; if that fails, post-restore reads it again itself.
func residentPrepared(s Settings, log *slog.Logger, criu int, token, dir string) int {
	d, err := images.Open(dir)
	if err != nil {
		// Nothing can watch the images: post-restore (its own process)
		// puts them back, or the next pre-restore does.
		log.Error("resident hook: cannot open the images: post-restore will do without it", "err", err)
		return 1
	}
	defer d.Close()
	s.Log = log
	pidfd, lfd, err := residentListen(criu)
	if err != nil {
		// CRIU is gone already (or the socket is taken): be the watcher.
		log.Debug("resident hook: no resident for the prepared rewrite", "err", err)
		if err := watchProcess(d, criu, token, nil, log); err != nil {
			return 1
		}
		return 0
	}
	defer unix.Close(pidfd)
	defer unix.Close(lfd)
	// CRIU's stdio are not this process's: a runtime that reads them to
	// their end must not wait for it.
	detachStdio()
	pre, err := preparedRewrite(d, token)
	if err != nil {
		log.Warn("resident hook: the prepared rewrite cannot be taken over: post-restore reads it again", "err", err)
		pre = nil
	} else {
		log.Info("pre-restore: prepared rewrite in place: CRIU restores the mounts it must, without sharing; mntv2 makes the rest at post-restore",
			"kept", len(pre.man.Kept), "originals", backupPrefix+"*", "watching", criu)
	}
	return residentServe(d, s, log, criu, pidfd, lfd, token, pre)
}

// detachStdio points fds 0 to 2 at /dev/null.
func detachStdio() {
	if null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0); err == nil {
		for fd := 0; fd <= 2; fd++ {
			_ = unix.Dup3(int(null.Fd()), fd, 0)
		}
		null.Close()
	}
}

// residentListen opens a pidfd of criu and the listening socket.
func residentListen(criu int) (pidfd, lfd int, err error) {
	if pidfd, err = unix.PidfdOpen(criu, 0); err != nil {
		return -1, -1, fmt.Errorf("pidfd_open(%d): %w", criu, err)
	}
	lfd, err = unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		if err = unix.Bind(lfd, &unix.SockaddrUnix{Name: "@" + ResidentName(criu)}); err == nil {
			err = unix.Listen(lfd, 4)
		}
		if err != nil {
			unix.Close(lfd)
		}
	}
	if err != nil {
		unix.Close(pidfd)
		return -1, -1, fmt.Errorf("listen on @%s: %w", ResidentName(criu), err)
	}
	return pidfd, lfd, nil
}

type resident struct {
	d     *images.Dir
	s     Settings
	log   *slog.Logger
	criu  int
	pidfd int
	pre   *rewritten
}

// serve waits for CRIU's post-restore (and runs it) or for CRIU's exit
// (and puts the originals back, as the watcher does).
func (r *resident) serve(lfd int, token string) error {
	fds := []unix.PollFd{{Fd: int32(r.pidfd), Events: unix.POLLIN}, {Fd: int32(lfd), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(fds, -1); err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("poll: %w", err)
		}
		if fds[0].Revents != 0 {
			return recoverAfter(r.d, r.criu, token, r.log)
		}
		if fds[1].Revents == 0 {
			continue
		}
		conn, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err != nil {
			continue
		}
		if r.handle(conn) {
			// The originals' names, put back unsynced while CRIU
			// waited, are made durable once CRIU is done (an fsync is a
			// journal commit, which CRIU's own writes would wait for),
			// or after a second.
			waitReadable(r.pidfd, 1000)
			_ = r.d.Sync()
			// A post-restore that failed before it put the originals
			// back (CRIU died while it paused): this is the watcher.
			return recoverAfter(r.d, r.criu, token, r.log)
		}
	}
}

// handle serves one connection; it returns whether it ran post-restore.
func (r *resident) handle(conn int) bool {
	defer unix.Close(conn)
	cred, err := unix.GetsockoptUcred(conn, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil || cred.Uid != 0 {
		r.log.Warn("resident hook: refused a connection that is not CRIU's action script", "peer", cred)
		return false
	}
	buf := make([]byte, 1<<16)
	oob := make([]byte, unix.CmsgSpace(3*4))
	n, oobn, flags, _, err := unix.Recvmsg(conn, buf, oob, unix.MSG_CMSG_CLOEXEC)
	var stdio []*os.File
	if err == nil && oobn > 0 {
		if msgs, perr := unix.ParseSocketControlMessage(oob[:oobn]); perr == nil && len(msgs) == 1 {
			if fds, ferr := unix.ParseUnixRights(&msgs[0]); ferr == nil {
				for i, fd := range fds {
					stdio = append(stdio, os.NewFile(uintptr(fd), "stdio"+strconv.Itoa(i)))
				}
			}
		}
	}
	defer func() {
		for _, f := range stdio {
			f.Close()
		}
	}()
	if err != nil || flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		r.log.Warn("resident hook: a malformed request: leaving it to the action script", "err", err)
		return false
	}
	env := map[string]string{}
	for _, kv := range bytes.Split(buf[:n], []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			env[k] = v
		}
	}
	getenv := func(k string) string { return env[k] }
	if getenv(EnvAction) == "post-setup-namespaces" && len(stdio) == 0 {
		// The action script is gone already (it does not wait): the
		// task it names, CRIU's child, vouches for it.
		r.advance(getenv)
		return false
	}
	if getenv(EnvAction) != "post-restore" || len(stdio) != 3 || parentOf(int(cred.Pid)) != r.criu {
		r.log.Warn("resident hook: a malformed post-restore request, or not CRIU's action script: leaving it to the action script", "peer", cred)
		return false
	}
	if _, err := unix.Write(conn, []byte{residentTaken}); err != nil {
		return false
	}
	s, err := LoadSettings(getenv)
	log, closeLog := s.Logger(stdio[2])
	defer closeLog()
	if err == nil {
		// Stop and roll back if the action script or CRIU dies.
		stop, unwatch := whileAlive(-1, r.pidfd, conn)
		defer unwatch()
		s.Log, s.Stop = log, stop
		err = postRestoreAction(r.d, getenv, s, log, r.gone, r.criu, r.pre)
	}
	code := byte(0)
	if err != nil {
		log.Error("aborting the restore", "action", "post-restore", "err", err)
		code = 1
	}
	_, _ = unix.Write(conn, []byte{code})
	return true
}

// advance begins the completion in the root task's namespace at CRIU's
// post-setup-namespaces (restore.PreparedLive.Advance): it holds every
// mount CRIU makes, and CRIU restores the tasks' memory and files before
// post-restore. Only the root task exists yet; the other namespaces wait
// for post-restore.
func (r *resident) advance(getenv func(string) string) {
	if r.pre == nil || r.pre.live == nil || getenv(EnvImageDir) != r.d.Path() || getenv(envYardNS) == "" {
		return
	}
	pid, err := strconv.Atoi(getenv(EnvInitPID))
	if err != nil || pid <= 0 {
		return
	}
	// The restored root task is CRIU's child, or its sibling when CRIU
	// restores as one (--restore-sibling: runc, containerd).
	if pp := parentOf(pid); pp != r.criu && pp != parentOf(r.criu) {
		r.log.Warn("resident hook: post-setup-namespaces names a task that is not CRIU's", "pid", pid)
		return
	}
	advanceRoot(r.pre.live, r.d, pid, getenv(envYardNS), r.gone)
}

// advanceRoot begins a completion (restore.PreparedLive.Advance) in the
// namespace of the restored root task pid, once it has left yard (see
// leftYard); gone says CRIU is gone.
func advanceRoot(live *restore.PreparedLive, d *images.Dir, pid int, yard string, gone func() bool) {
	rootNS, ok, err := d.RootMountNamespace()
	if err != nil || !ok {
		return
	}
	// Held from now on: the pid stays the root task's while it is open.
	task, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return
	}
	nsPath := "/proc/" + strconv.Itoa(pid) + "/ns/mnt"
	wait := leftYard(nsPath, yard, func() bool { return gone() || readable(task) })
	live.Advance(map[uint32]string{rootNS: nsPath}, func(stop <-chan struct{}) bool {
		defer unix.Close(task)
		return wait(stop)
	})
}

// readable says whether fd (a pidfd: its process exited) polls readable.
func readable(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// envYardNS is the namespace CRIU's root task built the restored ones in
// (its roots yard), as /proc/PID/ns/mnt showed it at post-setup-namespaces:
// the action script's C half adds it to the environment it sends.
const envYardNS = "MNTV2_YARD_NS"

// leftYard waits until the namespace at nsPath is no longer yard: at
// post-setup-namespaces CRIU's root task is still in the namespace it built
// the restored ones in, and enters its own once the action ends
// (criu/mount.c restore_task_mnt_ns), a few milliseconds later. It looks
// every 100 us for 20 ms, then every millisecond, and gives up when stop
// closes (post-restore began), gone says so, or after a few seconds (a
// root task that never leaves it: compat mode, say).
func leftYard(nsPath, yard string, gone func() bool) func(stop <-chan struct{}) bool {
	return func(stop <-chan struct{}) bool {
		start := time.Now()
		deadline := start.Add(5 * time.Second)
		for {
			now, err := os.Readlink(nsPath)
			if err != nil {
				return false
			}
			if now != yard {
				return true
			}
			select {
			case <-stop:
				return false
			default:
			}
			t := time.Now()
			if gone() || t.After(deadline) {
				return false
			}
			if t.Sub(start) < 20*time.Millisecond {
				// Not time.Sleep: the runtime rounds a sleep this short
				// up to its timer's resolution, about a millisecond
				// here, which post-restore would wait for.
				_ = unix.Nanosleep(&unix.Timespec{Nsec: 100_000}, nil)
			} else {
				time.Sleep(time.Millisecond)
			}
		}
	}
}

// whileAlive returns a channel closed once the process pid (if not -1)
// exits, or any of fds (pidfds, or a connection whose peer closes) reports
// an event; unwatch ends the watching.
func whileAlive(pid int, fds ...int) (stop <-chan struct{}, unwatch func()) {
	ch := make(chan struct{})
	var owned []int // closed by unwatch
	pfds := make([]unix.PollFd, 0, len(fds)+2)
	for _, fd := range fds {
		pfds = append(pfds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP})
	}
	if pid > 0 {
		if fd, err := unix.PidfdOpen(pid, 0); err == nil {
			owned = append(owned, fd)
			pfds = append(pfds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
		}
	}
	// An eventfd ends the poll when unwatched.
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		for _, fd := range owned {
			unix.Close(fd)
		}
		return ch, func() {}
	}
	owned = append(owned, efd)
	pfds = append(pfds, unix.PollFd{Fd: int32(efd), Events: unix.POLLIN})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_, err := unix.Poll(pfds, -1)
			if err == unix.EINTR {
				continue
			}
			if err != nil || pfds[len(pfds)-1].Revents == 0 {
				close(ch)
			}
			return
		}
	}()
	return ch, func() {
		_, _ = unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		<-done
		for _, fd := range owned {
			unix.Close(fd)
		}
	}
}

// gone says whether CRIU has exited.
func (r *resident) gone() bool {
	fds := []unix.PollFd{{Fd: int32(r.pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// parentOf is the parent pid of pid, from /proc/PID/stat; -1 if unknown.
func parentOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return -1
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return -1
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return -1
	}
	return ppid
}

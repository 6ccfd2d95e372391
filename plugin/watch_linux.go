package plugin

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mntv2/mntv2/images"
	"golang.org/x/sys/unix"
)

// The watcher is this same executable run again with envWatcher set to
// "OWNER TOKEN" (the images directory is its fd 3, the "armed" pipe its fd
// 4): the package's init runs it and exits, before main. So any program
// that links the plugin (mntv2, or a Go program using Notify) is its own
// watcher, with nothing else to install. OWNER 0 watches a lifeline
// instead of a process: the read end of a pipe (fd 5) whose write end the
// starting process holds (Notify), which hangs up when that process closes
// it or dies.
const envWatcher = "_MNTV2_WATCHER"

func init() {
	v, ok := os.LookupEnv(envWatcher)
	if !ok {
		return
	}
	os.Exit(watcherMain(v))
}

func watcherMain(v string) int {
	owner, token, _ := strings.Cut(v, " ")
	pid, err := strconv.Atoi(owner)
	s, _ := LoadSettings(os.Getenv)
	log, closeLog := s.Logger(io.Discard)
	defer closeLog()
	if err != nil || token == "" {
		log.Error("watcher: bad "+envWatcher, "value", v)
		return 2
	}
	if pid == 0 {
		err = watchLifeline(3, 5, token, os.NewFile(4, "armed"), log)
	} else {
		err = Watch(3, pid, token, os.NewFile(4, "armed"), log)
	}
	if err != nil {
		return 1
	}
	return 0
}

// StartWatcher starts the watcher in its own session: it outlives this
// process, waits for owner (CRIU) to exit, then puts the originals back if
// the rewrite token made is still in place. It returns once the watcher
// holds a pidfd of owner.
func StartWatcher(d *images.Dir, owner int, token, logFile string) error {
	armed, err := startWatcher(d, owner, token, logFile, nil)
	if err != nil {
		return err
	}
	return armed()
}

// startWatcher starts the watcher of owner, or (owner 0) of the lifeline
// pipe's read end, and returns at once; armed waits until it holds what
// it watches.
func startWatcher(d *images.Dir, owner int, token, logFile string, lifeline *os.File) (armed func() error, err error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	armedR, armedW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	// A duplicate for the child: an *os.File of d's own fd would close it
	// when collected.
	dupfd, err := unix.FcntlInt(uintptr(d.Fd()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		armedR.Close()
		armedW.Close()
		return nil, err
	}
	dir := os.NewFile(uintptr(dupfd), d.Path())
	defer dir.Close()
	cmd := exec.Command(exe)
	cmd.ExtraFiles = []*os.File{dir, armedW}
	if lifeline != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, lifeline)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = append(os.Environ(), envWatcher+"="+strconv.Itoa(owner)+" "+token)
	if logFile != "" {
		cmd.Env = append(cmd.Env, EnvLog+"="+logFile)
	}
	err = cmd.Start()
	armedW.Close()
	if err != nil {
		armedR.Close()
		return nil, err
	}
	_ = cmd.Process.Release()
	// The watcher writes one byte once armed, or exits (EOF) on failure.
	done := make(chan error, 1)
	go func() {
		defer armedR.Close()
		var b [1]byte
		n, err := armedR.Read(b[:])
		if n == 1 {
			done <- nil
			return
		}
		done <- fmt.Errorf("%w: %v", errWatcher, err)
	}()
	return func() error {
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			return fmt.Errorf("%w in 10s", errWatcher)
		}
	}, nil
}

// Watch is the watcher: dirFd is the images directory, armed is closed
// once owner is watched. When owner exits, a rewrite with token still in
// the directory is recovered.
func Watch(dirFd int, owner int, token string, armed *os.File, log *slog.Logger) error {
	d, err := images.FromFile(os.NewFile(uintptr(dirFd), "images"))
	if err != nil {
		return err
	}
	defer d.Close()
	return watchProcess(d, owner, token, armed, log)
}

// watchProcess is Watch of the images d: armed (if not nil) is written to
// once owner is watched.
func watchProcess(d *images.Dir, owner int, token string, armed *os.File, log *slog.Logger) error {
	pidfd, err := unix.PidfdOpen(owner, 0)
	if err == nil {
		defer unix.Close(pidfd)
		if armed != nil {
			_, _ = armed.Write([]byte{1})
		}
	}
	// (The owner may be gone already.)
	if armed != nil {
		armed.Close()
	}
	if err == nil {
		waitReadable(pidfd, -1)
	}
	return recoverAfter(d, owner, token, log)
}

// watchLifeline is Watch of the lifeline pipe's read end lifeFd instead of
// a process: when it hangs up (its holder closed it or died), a rewrite
// with token still in the directory is recovered.
func watchLifeline(dirFd, lifeFd int, token string, armed *os.File, log *slog.Logger) error {
	d, err := images.FromFile(os.NewFile(uintptr(dirFd), "images"))
	if err != nil {
		return err
	}
	defer d.Close()
	_, _ = armed.Write([]byte{1})
	armed.Close()
	waitReadable(lifeFd, -1)
	return recoverAfter(d, 0, token, log)
}

// waitReadable waits until fd (a pidfd, a pipe) is readable or hangs up,
// or timeout ms have passed (-1: no timeout).
func waitReadable(fd, timeout int) {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(fds, timeout); err != unix.EINTR {
			return
		}
	}
}

// recoverAfter puts the original images back after the CRIU process owner
// (0: a lifeline) exited, if the rewrite token made is still in place.
func recoverAfter(d *images.Dir, owner int, token string, log *slog.Logger) error {
	man, err := ReadManifest(d)
	if err != nil || man == nil || man.Token != token {
		return err // post-restore (or a newer pre-restore) took over
	}
	if owner == 0 {
		log.Warn("the restoring process closed its lifeline before post-restore: putting the original images back", "images", d.Path())
	} else {
		log.Warn("CRIU exited before post-restore: putting the original images back", "criu", owner, "images", d.Path())
	}
	if _, err := Recover(d); err != nil {
		log.Error("recovering the original images failed: run mntv2 criu-images restore DIR", "err", err)
		return err
	}
	log.Info("original images restored", "images", d.Path())
	return nil
}

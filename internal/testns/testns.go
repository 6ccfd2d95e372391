// Package testns runs a privileged test in its own private mount namespace.
//
// Isolate re-executes the test binary for just the calling test, in a new
// mount namespace whose mounts are all made private (exec.Cmd's
// Unshareflags: CLONE_NEWNS does both). Every thread of that child process,
// the Go runtime's included, is in the new namespace, so nothing a test
// mounts can reach the host's mounts, and the namespace dies with the child.
//
// As non-root the test is skipped with a message, except under CI (CI set
// to anything), where a privileged test that cannot run fails.
package testns

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/regfile"
	"github.com/mntv2/mntv2/images"
	"google.golang.org/protobuf/proto"
)

const envName = "MNTV2_TESTNS"

// Isolate returns true when the caller is running inside its own private
// mount namespace and should go on with the test body. It returns false in
// the parent, after the child has run the test and its result was reported.
func Isolate(t *testing.T) bool {
	t.Helper()
	if os.Getenv(envName) == t.Name() {
		lockShared(t)
		return true
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is a privileged test and CI runs as root, but this process is uid %d", t.Name(), os.Geteuid())
		}
		t.Skipf("%s needs root (mount namespaces): skipped for this non-root run; CI runs it as root", t.Name())
	}
	args := []string{"-test.run", runPattern(t.Name()), "-test.count=1", "-test.v"}
	if testing.Short() {
		args = append(args, "-test.short")
	}
	args = append(args, extraArgs()...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), envName+"="+t.Name())
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	text := out.String()
	if err != nil {
		t.Fatalf("in its own mount namespace, %s failed (%v):\n%s", t.Name(), err, text)
	}
	if !strings.Contains(text, "--- PASS: "+t.Name()) {
		t.Fatalf("in its own mount namespace, %s did not pass:\n%s", t.Name(), text)
	}
	if testing.Verbose() {
		t.Log(text)
	}
	return false
}

// runPattern matches exactly the test (and subtest) named.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

// extraArgs passes on the test flags that tests of this project define
// (-seed, -forests, ...), given as -flag=value on the command line.
func extraArgs() []string {
	var out []string
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "-test.") && strings.Contains(a, "=") {
			out = append(out, a)
		}
	}
	return out
}

// Privileged tests of every package (go test runs packages in parallel)
// hold a shared lock on lockPath while they run; a test that changes
// something global to the machine, such as the fs.mount-max sysctl, takes
// it exclusively (Exclusive) so that no other test's mounts see it.
var (
	lockPath = filepath.Join(os.TempDir(), "mntv2-privileged-tests.lock")
	lockFd   = -1
)

func lockShared(t *testing.T) {
	fd, err := syscall.Open(lockPath, syscall.O_RDWR|syscall.O_CREAT|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatalf("test lock %s: %v", lockPath, err)
	}
	if err := syscall.Flock(fd, syscall.LOCK_SH); err != nil {
		t.Fatalf("test lock %s: %v", lockPath, err)
	}
	lockFd = fd // held until the process (one test) exits
}

// Exclusive waits until no other privileged test runs, and keeps them
// waiting until the returned function is called.
func Exclusive(t *testing.T) (release func()) {
	t.Helper()
	if lockFd < 0 {
		t.Fatal("testns.Exclusive outside Isolate")
	}
	if err := syscall.Flock(lockFd, syscall.LOCK_EX); err != nil {
		t.Fatalf("test lock %s: %v", lockPath, err)
	}
	return func() { _ = syscall.Flock(lockFd, syscall.LOCK_SH) }
}

// OpenFDs counts this process's open fds, for tests that check nothing
// leaks.
func OpenFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// CopyDir copies the files of dir (a CRIU images directory: no
// subdirectories) into a new temporary directory of the test.
func CopyDir(t *testing.T, dir string) string {
	t.Helper()
	dst := t.TempDir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// WriteFilesImage gives the images of dir (a fixture, which keeps no
// files.img) one open file, on the root mount of the root namespace: the
// other mounts are mntv2's to make in reduce mode.
func WriteFilesImage(t *testing.T, dir string) {
	t.Helper()
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ns, _, err := d.RootMountNamespace()
	if err != nil {
		t.Fatal(err)
	}
	ms, err := d.Mounts(ns)
	if err != nil || len(ms) == 0 {
		t.Fatal(ms, err)
	}
	var root int32 = -1
	for _, m := range ms {
		if m.Mountpoint == "/" {
			root = int32(m.MntID)
		}
	}
	u := uint32(0)
	fe := &fdinfo.FileEntry{Type: fdinfo.FdTypes_REG.Enum(), Id: proto.Uint32(1), Reg: &regfile.RegFileEntry{
		Id: proto.Uint32(1), Flags: &u, Pos: proto.Uint64(0), Name: proto.String("/etc/hostname"), MntId: &root,
		Fown: &fown.FownEntry{Uid: &u, Euid: &u, Signum: &u, PidType: &u, Pid: &u}}}
	rec, err := proto.Marshal(fe)
	if err != nil {
		t.Fatal(err)
	}
	img := &images.Image{File: "files.img", Type: images.Files, Records: [][]byte{rec}}
	if err := os.WriteFile(filepath.Join(dir, img.File), img.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

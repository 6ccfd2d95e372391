package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/testns"
	"golang.org/x/sys/unix"
)

// The robustness catalogue's restore cases (docs/robustness.md): each runs
// mntv2 restore on a shaped root or images and checks the documented
// outcome, then that nothing is left: the mount table, the root's listing
// and / are as before, no pin, and a canary outside the root is untouched.

// scene is a scratch root with a canary directory next to it.
type scene struct {
	t                  *testing.T
	imgs, root, pins   string
	outside, canary    string
	beforeRoot         string
	beforeSlash        string
	beforeMounts       []string
	beforeImages       map[string]string
	allowRootDifferent bool
	prepEnv            []string
}

func newScene(t *testing.T, fixture string) *scene {
	t.Helper()
	s := &scene{t: t, imgs: copyImages(t, fixture)}
	s.root, s.pins = scratchRoot(t)
	s.outside = filepath.Join(filepath.Dir(s.root), "outside")
	if err := os.Mkdir(s.outside, 0o755); err != nil {
		t.Fatal(err)
	}
	s.canary = filepath.Join(s.outside, "canary")
	if err := os.WriteFile(s.canary, []byte("untouched\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

func listing(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ")
}

func fileDigests(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		out[e.Name()] = string(b)
	}
	return out
}

// snapshot records the state the case must leave behind.
func (s *scene) snapshot() {
	s.beforeRoot, s.beforeSlash = listing(s.t, s.root), listing(s.t, "/")
	s.beforeMounts = mountinfoLines(s.t)
	s.beforeImages = fileDigests(s.t, s.imgs)
}

func (s *scene) restore(env []string, extra ...string) (string, string, int) {
	args := append([]string{"restore", "--images", s.imgs, "--root", s.root, "--pin-dir", s.pins, "--ext-mount-map", "auto"}, extra...)
	return mntv2Env(s.t, env, args...)
}

// check asserts that nothing is left; a successful restore is released
// first.
func (s *scene) check() {
	t := s.t
	t.Helper()
	if _, err := os.Stat(s.pins); err == nil && listing(t, s.pins) != "" {
		if _, errs, code := mntv2(t, "release", "--pin-dir", s.pins); code != 0 {
			t.Errorf("release: %s", errs)
		}
	}
	if b, err := os.ReadFile(s.canary); err != nil || string(b) != "untouched\n" {
		t.Errorf("canary: %q, %v", b, err)
	}
	if got := listing(t, s.outside); got != "canary" {
		t.Errorf("outside the root now holds %q", got)
	}
	if got := listing(t, s.root); got != s.beforeRoot && !s.allowRootDifferent {
		t.Errorf("root holds %q, before %q", got, s.beforeRoot)
	}
	if got := listing(t, "/"); got != s.beforeSlash {
		t.Errorf("/ holds %q, before %q", got, s.beforeSlash)
	}
	if after := mountinfoLines(t); strings.Join(after, "\n") != strings.Join(s.beforeMounts, "\n") {
		t.Errorf("mount table changed:\n%s", strings.Join(after, "\n"))
	}
	if got := fileDigests(t, s.imgs); fmt.Sprint(got) != fmt.Sprint(s.beforeImages) {
		t.Errorf("the images directory changed")
	}
}

func editMounts(t *testing.T, dir string, ns uint32, edit func(ms []images.Mount) []images.Mount) {
	t.Helper()
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ms, err := d.Mounts(ns)
	if err != nil {
		t.Fatal(err)
	}
	img, err := images.EncodeMounts(ns, edit(ms))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WriteImage(img); err != nil {
		t.Fatal(err)
	}
}

func mustContain(t *testing.T, s string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(s, w) {
			t.Errorf("%q does not say %q", s, w)
		}
	}
}

// rootCases shape the restore root of fixture 01 (mounts 63 /, 64 /bin,
// 68 /etc, 70 /proc, 71 /dev, 72 /dev/null, 73 /tmp).
func TestRobustRoot(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	cases := []struct {
		name string
		prep func(t *testing.T, s *scene)
		code int
		want []string
	}{
		{"parent of a mountpoint is a symlink", func(t *testing.T, s *scene) {
			editMounts(t, s.imgs, 10, func(ms []images.Mount) []images.Mount {
				for i := range ms {
					if ms[i].Mountpoint == "/proc" {
						ms[i].Mountpoint = "/x/proc"
					}
				}
				return ms
			})
			must(t, os.Symlink("../outside", filepath.Join(s.root, "x")))
		}, 1, []string{"(/x/proc)", "x is a symlink"}},
		{"a file where a directory is expected", func(t *testing.T, s *scene) {
			must(t, os.WriteFile(filepath.Join(s.root, "tmp"), nil, 0o644))
		}, 1, []string{"mount 73 (/tmp)", "tmp"}},
		{"a directory where a file is expected", func(t *testing.T, s *scene) {
			editMounts(t, s.imgs, 10, func(ms []images.Mount) []images.Mount {
				for i := range ms {
					if ms[i].Mountpoint == "/dev/null" {
						ms[i].Mountpoint, ms[i].ParentMntID = "/null", 63
					}
				}
				return ms
			})
			must(t, os.Mkdir(filepath.Join(s.root, "null"), 0o755))
		}, 1, []string{"mount 72", "null is a directory, but the mount is of a file"}},
		{"a fifo as a mountpoint", func(t *testing.T, s *scene) {
			must(t, unix.Mkfifo(filepath.Join(s.root, "tmp"), 0o644))
		}, 1, []string{"mount 73 (/tmp)"}},
		{"a socket as a mountpoint", func(t *testing.T, s *scene) {
			l, err := net.Listen("unix", filepath.Join(s.root, "tmp"))
			must(t, err)
			t.Cleanup(func() { l.Close() })
		}, 1, []string{"mount 73 (/tmp)"}},
		{"missing mountpoints are made, and removed on failure", func(t *testing.T, s *scene) {
			s.prepEnv = []string{"MNTV2_FAIL_SYSCALL=40"}
		}, 1, []string{"injected failure"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newScene(t, "01-seed-reverse-order")
			c.prep(t, s)
			s.snapshot()
			out, errs, code := s.restore(s.prepEnv)
			if code != c.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, c.code, out, errs)
			}
			mustContain(t, errs, c.want...)
			s.check()
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A second thread swaps /tmp of the root with a symlink to the outside
// (renameat2 RENAME_EXCHANGE) as fast as it can while the restore runs:
// the restore either fails cleanly or restores inside the root; nothing
// outside changes.
func TestRobustRenameExchangeRace(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	for try := 0; try < 5; try++ {
		s := newScene(t, "01-seed-reverse-order")
		must(t, os.Mkdir(filepath.Join(s.root, "tmp"), 0o755))
		must(t, os.Symlink("../outside", filepath.Join(s.root, "swap")))
		s.snapshot()
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		swaps := 0
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if unix.Renameat2(unix.AT_FDCWD, filepath.Join(s.root, "tmp"), unix.AT_FDCWD, filepath.Join(s.root, "swap"), unix.RENAME_EXCHANGE) == nil {
					swaps++
				}
			}
		}()
		_, errs, code := s.restore(nil)
		close(stop)
		wg.Wait()
		if swaps == 0 {
			t.Fatal("the race never swapped")
		}
		// Put the names back as they were for the listing check.
		if fi, err := os.Lstat(filepath.Join(s.root, "tmp")); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			must(t, unix.Renameat2(unix.AT_FDCWD, filepath.Join(s.root, "tmp"), unix.AT_FDCWD, filepath.Join(s.root, "swap"), unix.RENAME_EXCHANGE))
		}
		switch code {
		case 0:
			s.allowRootDifferent = true // its mountpoints, made in the root
			if out, _, code := mntv2(t, "verify", "--images", s.imgs, "--pin-dir", s.pins); code != 0 {
				t.Errorf("restored during the race, but verify says:\n%s", out)
			}
		case 1:
			mustContain(t, errs, "(/tmp)")
		default:
			t.Fatalf("exit %d: %s", code, errs)
		}
		s.check()
	}
}

// System limits and missing pieces.
func TestRobustSystem(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	t.Run("fs.mount-max reached mid-restore", func(t *testing.T) {
		s := newScene(t, "07-propagation-storm")
		s.snapshot()
		const sysctl = "/proc/sys/fs/mount-max"
		old, err := os.ReadFile(sysctl)
		must(t, err)
		// Room for half of the restore's mounts in the new namespace.
		limit := fmt.Sprint(20)
		// The sysctl is global: no other privileged test may mount while
		// it is low.
		release := testns.Exclusive(t)
		must(t, os.WriteFile(sysctl, []byte(limit), 0o644))
		_, errs, code := s.restore(nil)
		must(t, os.WriteFile(sysctl, old, 0o644))
		release()
		if code != 1 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		mustContain(t, errs, "no space left on device", "mount ")
		s.check()
	})
	t.Run("low RLIMIT_NOFILE", func(t *testing.T) {
		s := newScene(t, "07-propagation-storm")
		s.snapshot()
		cmd := exec.Command("sh", "-c", `ulimit -n 24 && exec "$0" "$@"`, binary_, "restore", "--images", s.imgs,
			"--root", s.root, "--pin-dir", s.pins, "--ext-mount-map", "auto")
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
			t.Fatalf("want exit 1: %v\n%s", err, out)
		}
		mustContain(t, string(out), "too many open files")
		s.check()
	})
	t.Run("a kernel feature reported missing", func(t *testing.T) {
		s := newScene(t, "01-seed-reverse-order")
		s.snapshot()
		_, errs, code := s.restore([]string{"MNTV2_TEST_HIDE_FEATURE=MOVE_MOUNT_SET_GROUP"})
		if code != 2 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		mustContain(t, errs, "lacks move_mount with MOVE_MOUNT_SET_GROUP (5.15)")
		s.check()
	})
	t.Run("the external source is missing", func(t *testing.T) {
		s := newScene(t, "01-seed-reverse-order")
		s.snapshot()
		_, errs, code := s.restore(nil, "--ext-mount-map", "CRIU:AUTOGENERATED:/nonexistent/mntv2")
		if code != 2 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		mustContain(t, errs, "/nonexistent/mntv2")
		s.check()
	})
	t.Run("two restores into one pin dir at once", func(t *testing.T) {
		s := newScene(t, "07-propagation-storm")
		s.snapshot()
		s.allowRootDifferent = true // the winner made its mountpoints in the root
		codes := make([]int, 2)
		errs := make([]string, 2)
		var wg sync.WaitGroup
		for i := range codes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i], codes[i] = s.restore(nil)
			}()
		}
		wg.Wait()
		ok := 0
		for i, c := range codes {
			switch c {
			case 0:
				ok++
			case 1, 2:
				if !strings.Contains(errs[i], "in use by another mntv2 restore") && !strings.Contains(errs[i], "mntns-10") {
					t.Errorf("the loser says %q", errs[i])
				}
			default:
				t.Errorf("exit %d: %s", c, errs[i])
			}
		}
		if ok != 1 {
			t.Fatalf("%d restores succeeded, want exactly 1: %v %q", ok, codes, errs)
		}
		if out, _, code := mntv2(t, "verify", "--images", s.imgs, "--pin-dir", s.pins); code != 0 {
			t.Errorf("the surviving restore: %s", out)
		}
		s.check()
	})
}

// SIGTERM and SIGKILL of mntv2 restore before each phase: SIGTERM rolls
// back; SIGKILL leaves nothing either, since the new namespaces die with
// the process and pins come last (the root here has every mountpoint, so
// nothing is created in it).
func TestRobustSignals(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	for _, phase := range []string{"create", "assemble", "sharing", "flags", "finish"} {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
			t.Run(phase+"/"+sig.String(), func(t *testing.T) {
				s := newScene(t, "07-propagation-storm")
				for _, d := range []string{"bin", "lib", "lib64", "usr", "etc", "sbin", "proc", "dev", "tmp"} {
					must(t, os.Mkdir(filepath.Join(s.root, d), 0o755))
				}
				s.snapshot()
				cmd := exec.Command(binary_, "restore", "--images", s.imgs, "--root", s.root, "--pin-dir", s.pins, "--ext-mount-map", "auto")
				cmd.Env = append(os.Environ(), "MNTV2_TEST_PAUSE="+phase)
				stderr, err := cmd.StderrPipe()
				must(t, err)
				must(t, cmd.Start())
				line, _ := bufio.NewReader(stderr).ReadString('\n')
				if !strings.Contains(line, "paused before phase "+phase) {
					_ = cmd.Process.Kill()
					_ = cmd.Wait()
					t.Fatalf("no pause: %q", line)
				}
				must(t, cmd.Process.Signal(sig))
				done := make(chan error, 1)
				go func() { done <- cmd.Wait() }()
				select {
				case err = <-done:
				case <-time.After(20 * time.Second):
					_ = cmd.Process.Kill()
					t.Fatal("mntv2 did not end")
				}
				ee, _ := err.(*exec.ExitError)
				if sig == syscall.SIGTERM && (ee == nil || ee.ExitCode() != 1) {
					t.Errorf("SIGTERM: %v, want exit 1", err)
				}
				if sig == syscall.SIGKILL && (ee == nil || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL) {
					t.Errorf("SIGKILL: %v", err)
				}
				// The namespaces of a killed process go once its last
				// thread is reaped.
				time.Sleep(50 * time.Millisecond)
				s.check()
			})
		}
	}
}

// The CRIU hook killed (SIGKILL or SIGTERM) at every step of its image
// rewrite, and at the start of post-restore: a stand-in for CRIU (a shell,
// the hook's parent) then exits, and the watcher puts the images back
// byte-identical.
func TestRobustHookKilled(t *testing.T) {
	steps := []string{"manifest", "backup mountpoints-10.img", "rewrite mountpoints-10.img", "post-restore"}
	for _, step := range steps {
		for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
			t.Run(step+"/"+sig.String(), func(t *testing.T) {
				dir := copyImages(t, "01-seed-reverse-order")
				before := fileDigests(t, dir)
				script := `"$0"`
				if step == "post-restore" {
					script = `"$0" && CRTOOLS_SCRIPT_ACTION=post-restore MNTV2_TEST_PAUSE=post-restore "$0"`
				}
				criu := exec.Command("sh", "-c", script+"; sleep 30", binary_)
				criu.Env = append(os.Environ(), "CRTOOLS_SCRIPT_ACTION=pre-restore", "CRTOOLS_IMAGE_DIR="+dir,
					"CRTOOLS_INIT_PID=1")
				if step != "post-restore" {
					criu.Env = append(criu.Env, "MNTV2_TEST_PAUSE="+step)
				}
				stderr, err := criu.StderrPipe()
				must(t, err)
				must(t, criu.Start())
				defer func() { _ = criu.Process.Kill(); _ = criu.Wait() }()
				r := bufio.NewReader(stderr)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						t.Fatalf("the hook never paused before %s", step)
					}
					if strings.Contains(line, "paused before "+step) {
						break
					}
				}
				go func() { _, _ = bufio.NewReader(r).WriteTo(io.Discard) }()
				kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", criu.Process.Pid, criu.Process.Pid))
				must(t, err)
				var hook int
				if _, err := fmt.Sscan(string(kids), &hook); err != nil {
					t.Fatalf("no hook process under the stand-in: %q", kids)
				}
				must(t, syscall.Kill(hook, sig))
				time.Sleep(50 * time.Millisecond)
				// CRIU ends (it would abort the restore).
				_ = criu.Process.Kill()
				_ = criu.Wait()
				deadline := time.Now().Add(10 * time.Second)
				for {
					got := fileDigests(t, dir)
					if fmt.Sprint(got) == fmt.Sprint(before) {
						break
					}
					if time.Now().After(deadline) {
						var names []string
						for n := range got {
							names = append(names, n)
						}
						t.Fatalf("the images were not put back: %v", names)
					}
					time.Sleep(20 * time.Millisecond)
				}
			})
		}
	}
}

package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The resident hook: pre-restore's process stays after CRIU goes on, and
// CRIU's post-restore action is served by it (its log lines carry its pid,
// not the action script's); without it (MNTV2_RESIDENT=0) post-restore runs
// in the action script's process. Either way a failing post-restore fails
// the action with the cause on the action's stderr, the images come back
// byte-identical, and no mntv2 process is left once CRIU has gone.
func TestHookResident(t *testing.T) {
	for _, resident := range []bool{true, false} {
		t.Run(fmt.Sprintf("resident=%v", resident), func(t *testing.T) {
			dir := copyImages(t, "01-seed-reverse-order")
			before := fileDigests(t, dir)
			// A stand-in for CRIU: pre-restore, then post-restore of a
			// "restored tree" (pid 1, whose namespaces are not the
			// images': post-restore must fail), printing the pid of
			// the post-restore action and its exit status.
			script := `"$0" || exit 9
CRTOOLS_SCRIPT_ACTION=post-restore "$0" & pid=$!
wait $pid; echo "post-restore pid=$pid status=$?"`
			criu := exec.Command("sh", "-c", script, binary_)
			criu.Env = append(os.Environ(), "CRTOOLS_SCRIPT_ACTION=pre-restore", "CRTOOLS_IMAGE_DIR="+dir, "CRTOOLS_INIT_PID=1")
			if !resident {
				criu.Env = append(criu.Env, "MNTV2_RESIDENT=0")
			}
			var out, errb bytes.Buffer
			criu.Stdout, criu.Stderr = &out, &errb
			if err := criu.Run(); err != nil {
				t.Fatalf("stand-in: %v\n%s%s", err, out.String(), errb.String())
			}
			m := regexp.MustCompile(`post-restore pid=(\d+) status=(\d+)`).FindStringSubmatch(out.String())
			if m == nil || m[2] != "1" {
				t.Fatalf("post-restore: %q, want status 1\nstderr: %s", out.String(), errb.String())
			}
			if !strings.Contains(errb.String(), "aborting the restore") || !strings.Contains(errb.String(), "post-restore") {
				t.Errorf("post-restore's failure is not on its stderr: %s", errb.String())
			}
			pids := regexp.MustCompile(`level=ERROR msg="aborting the restore" mntv2=(\d+) action=post-restore`).FindStringSubmatch(errb.String())
			if pids == nil {
				t.Fatalf("no post-restore error line: %q", errb.String())
			}
			if inResident := pids[1] != m[1]; inResident != resident {
				t.Errorf("post-restore ran in process %s, the action script was %s: want resident=%v", pids[1], m[1], resident)
			}
			// CRIU (the stand-in) has exited: the images are the
			// originals, and no mntv2 of this test is left.
			waitHookDone(t, dir, before)
		})
	}
}

// waitHookDone waits until the images of dir are before again and no hook
// process of this test has dir in its environment (5 s at the most).
func waitHookDone(t *testing.T, dir string, before map[string]string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for fmt.Sprint(fileDigests(t, dir)) != fmt.Sprint(before) {
		if time.Now().After(deadline) {
			t.Fatal("the images were not put back")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for time.Now().Before(deadline) && hookLeft(t, dir) {
		time.Sleep(20 * time.Millisecond)
	}
	if hookLeft(t, dir) {
		t.Error("a hook process is left after CRIU exited")
	}
}

// hookLeft says whether a process of this test's binary still has dir in
// its environment.
func hookLeft(t *testing.T, dir string) bool {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		exe, err := os.Readlink("/proc/" + e.Name() + "/exe")
		if err != nil || exe != binary_ {
			continue
		}
		env, _ := os.ReadFile("/proc/" + e.Name() + "/environ")
		if bytes.Contains(env, []byte("CRTOOLS_IMAGE_DIR="+dir+"\x00")) {
			return true
		}
	}
	return false
}

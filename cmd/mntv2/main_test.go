package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
)

const fixtures = "../../testdata/criu-4.2"

var binary_ string

func TestMain(m *testing.M) {
	if os.Getenv("MNTV2_CT") != "" {
		containerMain()
	}
	// A privileged test re-runs this binary in its own namespace
	// (internal/testns): it reuses the parent's build.
	if b := os.Getenv("MNTV2_TEST_BINARY"); b != "" {
		binary_ = b
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "mntv2-cli-test-")
	if err != nil {
		panic(err)
	}
	binary_ = filepath.Join(dir, "mntv2")
	if out, err := exec.Command("go", "build", "-o", binary_, ".").CombinedOutput(); err != nil {
		panic(string(out))
	}
	os.Setenv("MNTV2_TEST_BINARY", binary_)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// mntv2 runs the binary and returns stdout, stderr and the exit code.
func mntv2(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return mntv2Env(t, nil, args...)
}

// mntv2Env runs the binary with extra environment variables.
func mntv2Env(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary_, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func TestVerifyFixtures(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(fixtures, "*", "mountinfo", "mntns-*.mountinfo"))
	if len(files) != 8 {
		t.Fatalf("want 8 mountinfo files, got %d", len(files))
	}
	for _, mi := range files {
		fix := filepath.Dir(filepath.Dir(mi))
		id := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(mi), "mntns-"), ".mountinfo")
		out, errs, code := mntv2(t, "verify", "--images", filepath.Join(fix, "images"), "--mountinfo", mi, "--mntns", id)
		if code != 0 || !strings.HasPrefix(out, "identical: 1 namespaces, ") {
			t.Errorf("%s: exit %d, out %q, err %q", mi, code, out, errs)
		}
	}
}

func TestVerifyReportsDifferences(t *testing.T) {
	fix := filepath.Join(fixtures, "07-propagation-storm")
	b, _ := os.ReadFile(filepath.Join(fix, "mountinfo", "mntns-10.mountinfo"))
	mutated := strings.Replace(string(b), "/tmp/q rw,relatime shared:1", "/tmp/q rw,relatime", 1)
	file := filepath.Join(t.TempDir(), "mi")
	os.WriteFile(file, []byte(mutated), 0o600)
	out, _, code := mntv2(t, "verify", "--images", filepath.Join(fix, "images"), "--mountinfo", file)
	if code != 1 || !strings.Contains(out, "/tmp/q: peer group: expected shared:1") || !strings.Contains(out, "1 differences") {
		t.Fatalf("exit %d, out:\n%s", code, out)
	}
}

func TestUsageErrors(t *testing.T) {
	img := filepath.Join(fixtures, "06-nested-mntns-peers", "images")
	for _, args := range [][]string{
		{"verify", "--images", img},
		{"verify", "--images", img, "--mountinfo", "x", "--pid", "1"},
		{"verify", "--images", img, "--mountinfo", filepath.Join(fixtures, "06-nested-mntns-peers", "mountinfo", "mntns-10.mountinfo")}, // two namespaces, no --mntns
		{"verify", "--images", img, "--mountinfo", "x", "--mntns", "99"},
		{"show"},
		{"show", "--images", img, "--format", "yaml"},
		{"show", "--bogus"},
		{"show", "--images", img, "--pid", "1"},
		{"show", "--mountinfo", "/nonexistent/mountinfo"},
		{"show", "--pin-dir", "/nonexistent"},
		{"nosuchcommand"},
	} {
		_, errs, code := mntv2(t, args...)
		if code != 2 || !strings.HasPrefix(errs, "mntv2: ") {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a message", args, code, errs)
		}
	}
}

// copyImages copies a fixture's images to a temp dir and returns it.
func copyImages(t *testing.T, fixture string) string {
	t.Helper()
	dst := t.TempDir()
	src := filepath.Join(fixtures, fixture, "images")
	ents, _ := os.ReadDir(src)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600)
	}
	return dst
}

func TestHostileImagesExit2(t *testing.T) {
	mp := "mountpoints-10.img"
	rewriteMounts := func(edit func(ms []images.Mount) []images.Mount) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			d, _ := images.Open(dir)
			defer d.Close()
			ms, err := d.Mounts(10)
			if err != nil {
				t.Fatal(err)
			}
			img, _ := images.EncodeMounts(10, edit(ms))
			if err := d.WriteImage(img); err != nil {
				t.Fatal(err)
			}
		}
	}
	raw := func(edit func(b []byte) []byte) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			b, _ := os.ReadFile(filepath.Join(dir, mp))
			os.WriteFile(filepath.Join(dir, mp), edit(b), 0o600)
		}
	}
	cases := []struct {
		name string
		edit func(t *testing.T, dir string)
		want string
	}{
		{"truncated record", raw(func(b []byte) []byte { return b[:len(b)-3] }), "truncated"},
		{"wrong magic", raw(func(b []byte) []byte { b[4] ^= 0xff; return b }), "wrong magic"},
		{"2^31 record", raw(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[8:], 1<<31); return b }), "2147483648"},
		{"garbage protobuf", raw(func(b []byte) []byte {
			return append(b, 4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff)
		}), "undecodable record"},
		{"parent cycle", rewriteMounts(func(ms []images.Mount) []images.Mount {
			ms = append(ms, images.Mount{FSType: 5, MntID: 900, ParentMntID: 901, Root: "/", Mountpoint: "/a"},
				images.Mount{FSType: 5, MntID: 901, ParentMntID: 900, Root: "/", Mountpoint: "/a"})
			return ms
		}), "parent cycle"},
		{"missing parent", rewriteMounts(func(ms []images.Mount) []images.Mount {
			ms[0].ParentMntID = 12345
			return ms
		}), "missing parent"},
		{"duplicate ids", rewriteMounts(func(ms []images.Mount) []images.Mount {
			ms[1].MntID = ms[0].MntID
			return ms
		}), "duplicate mount id"},
		{"two roots", rewriteMounts(func(ms []images.Mount) []images.Mount {
			return append(ms, images.Mount{FSType: 5, MntID: 900, ParentMntID: 1, Root: "/", Mountpoint: "/"})
		}), "not exactly one root"},
		{"dotdot mountpoint", rewriteMounts(func(ms []images.Mount) []images.Mount {
			ms[0].Mountpoint = "/tmp/../../etc"
			return ms
		}), `contains ".."`},
		{"NUL in a root", rewriteMounts(func(ms []images.Mount) []images.Mount {
			ms[1].Root = "/a\x00b"
			return ms
		}), "NUL"},
		{"path longer than PATH_MAX", rewriteMounts(func(ms []images.Mount) []images.Mount {
			ms[1].Mountpoint = "/" + strings.Repeat("x", 5000)
			return ms
		}), "longer than 4096 bytes"},
		{"two mounts on one mountpoint of one parent", rewriteMounts(func(ms []images.Mount) []images.Mount {
			for _, m := range ms {
				if m.Mountpoint == "/tmp/q" {
					m.MntID = 900
					return append(ms, m)
				}
			}
			return ms
		}), "two mounts on one mountpoint"},
		{"mount id 0", rewriteMounts(func(ms []images.Mount) []images.Mount {
			ms[1].MntID = 0
			return ms
		}), "mount id 0"},
		{"a million empty records", raw(func(b []byte) []byte {
			return append(b, make([]byte, 4<<20)...) // a u32 length of 0, a million times
		}), "undecodable record"},
		{"the image of another namespace", func(t *testing.T, dir string) {
			b, _ := os.ReadFile(filepath.Join(dir, mp))
			os.WriteFile(filepath.Join(dir, "mountpoints-11.img"), b, 0o600)
		}, "duplicate mount id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyImages(t, "07-propagation-storm")
			c.edit(t, dir)
			for _, args := range [][]string{
				{"show", "--images", dir},
				{"verify", "--images", dir, "--mountinfo", filepath.Join(fixtures, "07-propagation-storm", "mountinfo", "mntns-10.mountinfo")},
			} {
				out, errs, code := mntv2(t, args...)
				if code != 2 {
					t.Fatalf("%v: exit %d, want 2; stdout %q stderr %q", args[0], code, out, errs)
				}
				if !strings.Contains(errs, c.want) || !strings.Contains(errs, dir) && !strings.Contains(errs, mp) {
					t.Fatalf("%v: stderr %q does not name the file and %q", args[0], errs, c.want)
				}
				if strings.Contains(errs, "panic") || strings.Contains(errs, "goroutine") {
					t.Fatalf("panicked: %s", errs)
				}
			}
		})
	}
}

// An fstype CRIU does not define reads as UNSUPPORTED, as CRIU reads it
// (criu/filesystems.c decode_fstype): show and verify take it; plan says
// which mount has no source, and why.
func TestUnsupportedFSType(t *testing.T) {
	dir := copyImages(t, "07-propagation-storm")
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ms, err := d.Mounts(10)
	if err != nil {
		t.Fatal(err)
	}
	for i := range ms {
		if ms[i].Mountpoint == "/tmp/q" {
			ms[i].FSType, ms[i].FSName = 9999, ""
		}
	}
	img, _ := images.EncodeMounts(10, ms)
	if err := d.WriteImage(img); err != nil {
		t.Fatal(err)
	}
	out, errs, code := mntv2(t, "show", "--images", dir)
	if code != 0 || !strings.Contains(out, "44 /tmp/q  (unsupported) storm root=/") {
		t.Errorf("show: exit %d, stdout %q stderr %q", code, out, errs)
	}
	_, errs, code = mntv2(t, "plan", "--images", dir, "--ext-mount-map", "auto")
	if code != 2 || !strings.Contains(errs, "namespace 10, mount 44 (/tmp/q): a filesystem CRIU has no type for (fstype UNSUPPORTED)") {
		t.Errorf("plan: exit %d, stderr %q", code, errs)
	}
}

func TestShowFormats(t *testing.T) {
	img := filepath.Join(fixtures, "06-nested-mntns-peers", "images")
	out, _, code := mntv2(t, "show", "--images", img)
	for _, want := range []string{"mount namespace 10: 15 mounts", "mount namespace 11: 16 mounts", "/tmp/shared  tmpfs shr root=/ rw,relatime shared:1", "group 1: 10:/tmp/shared 11:/tmp/shared; slaves: 10:/tmp/slave 11:/tmp/slave"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("text output lacks %q:\n%s", want, out)
		}
	}
	out, _, code = mntv2(t, "show", "--images", img, "--format", "json")
	var doc struct {
		Schema     string
		Namespaces []struct {
			ID     uint32
			Mounts []struct {
				Mountpoint string
				Shared     uint32
				Master     uint32
			}
		}
		Groups []struct {
			ID      uint32
			Members []struct{ NS, Mount uint32 }
		}
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 0 {
		t.Fatalf("json: %v, exit %d", err, code)
	}
	if doc.Schema != forest.JSONSchema || len(doc.Namespaces) != 2 || len(doc.Groups) != 2 || len(doc.Groups[0].Members) != 2 {
		t.Fatalf("json document: %+v", doc)
	}
	out, _, code = mntv2(t, "show", "--images", img, "--format", "dot")
	if code != 0 || !strings.HasPrefix(out, "digraph mounts {") || !strings.Contains(out, "subgraph cluster_g1") || !strings.Contains(out, "style=dashed") {
		t.Fatalf("dot output:\n%s", out)
	}
	dot, err := exec.LookPath("dot")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("Graphviz dot is not installed; .ci/run installs it")
		}
		t.Skip("Graphviz dot is not installed: skipping the dot -Tsvg check (CI installs it)")
	}
	for _, fix := range []string{"01-seed-reverse-order", "06-nested-mntns-peers", "07-propagation-storm"} {
		out, _, _ = mntv2(t, "show", "--images", filepath.Join(fixtures, fix, "images"), "--format", "dot")
		cmd := exec.Command(dot, "-Tsvg")
		cmd.Stdin = strings.NewReader(out)
		svg, err := cmd.CombinedOutput()
		if err != nil || !bytes.Contains(svg, []byte("<svg")) {
			t.Fatalf("%s: dot -Tsvg: %v\n%s", fix, err, svg)
		}
	}
}

// As CRIU's action script, mntv2 exits 0 at once, before the Go runtime
// starts, for an action it does nothing at (a C constructor), and still
// acts at pre-restore and post-restore (here they fail: no images).
func TestHookUnusedActions(t *testing.T) {
	for _, action := range []string{"pre-dump", "network-lock", "network-unlock", "setup-namespaces", "post-setup-namespaces", "pre-resume", "post-resume"} {
		out, errs, code := mntv2Env(t, []string{"CRTOOLS_SCRIPT_ACTION=" + action, "CRTOOLS_IMAGE_DIR=/nonexistent"})
		if code != 0 || out != "" || errs != "" {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", action, code, out, errs)
		}
	}
	for _, action := range []string{"pre-restore", "post-restore", "post-dump"} {
		_, errs, code := mntv2Env(t, []string{"CRTOOLS_SCRIPT_ACTION=" + action, "CRTOOLS_IMAGE_DIR=/nonexistent"})
		if code == 0 || !strings.Contains(errs, "/nonexistent") {
			t.Errorf("%s: exit %d, stderr %q: want a failure naming the images directory", action, code, errs)
		}
	}
}

package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/testns"
	"github.com/mntv2/mntv2/plugin"
)

// A rewrite prepared at post-dump (plugin.Prepare) is put in place by the
// action script's C half at pre-restore: the images CRIU reads are the
// ones the Go rewrite makes, the manifest names CRIU and a new token, and
// once CRIU has gone the images are byte-identical again, the prepared
// files included. Any change to an image (here its modification time)
// leaves the rewrite to the Go path, with the same result.
func TestHookPrepared(t *testing.T) {
	for _, tc := range []struct {
		name     string
		touch    bool // change an image after the preparation
		earlier  bool // a rewrite cut off before this pre-restore is in place
		env      string
		prepared bool // the C half's rewrite is used
	}{
		{name: "prepared", prepared: true},
		{name: "image changed", touch: true},
		{name: "MNTV2_PREPARED=0", env: "MNTV2_PREPARED=0"},
		{name: "strip mode", env: "MNTV2_REDUCE=0"},
		// Cut off at each change the C half makes (the manifest, the
		// second name, the fsync, the link and the rename of the new
		// image): it puts the originals back and the Go path rewrites.
		{name: "cut at 1", env: "MNTV2_TEST_PREPARED_CUT=1"},
		{name: "cut at 2", env: "MNTV2_TEST_PREPARED_CUT=2"},
		{name: "cut at 3", env: "MNTV2_TEST_PREPARED_CUT=3"},
		{name: "cut at 4", env: "MNTV2_TEST_PREPARED_CUT=4"},
		{name: "cut at 5", env: "MNTV2_TEST_PREPARED_CUT=5"},
		// A rewrite cut off earlier is in place: the Go path recovers it.
		{name: "earlier rewrite", earlier: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyImages(t, "02-peers-no-common-root")
			testns.WriteFilesImage(t, dir)
			d, err := images.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if err := plugin.Prepare(d, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
				t.Fatal(err)
			}
			if !d.Exists(plugin.PreparedName) {
				t.Fatal("nothing prepared")
			}
			if tc.touch {
				later := time.Now().Add(time.Minute)
				if err := os.Chtimes(filepath.Join(dir, "files.img"), later, later); err != nil {
					t.Fatal(err)
				}
			}
			before := fileDigests(t, dir)
			if tc.earlier {
				// As a crash after the second name leaves it: the
				// manifest, and the original under both names.
				man := `{"version": 2, "token": "0123", "owner": 1, "files": [], "mode": "reduce"}`
				if err := os.WriteFile(filepath.Join(dir, plugin.ManifestName), []byte(man), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Link(filepath.Join(dir, "files.img"), filepath.Join(dir, "mntv2-orig-files.img")); err != nil {
					t.Fatal(err)
				}
			}
			// What the Go rewrite makes of the same images.
			want := map[string]string{}
			if !strings.Contains(tc.env, "REDUCE=0") {
				ref := t.TempDir()
				for n := range before {
					if strings.HasSuffix(n, ".img") && !strings.HasPrefix(n, "mntv2-") || n == images.ExtraName {
						b, _ := os.ReadFile(filepath.Join(dir, n))
						os.WriteFile(filepath.Join(ref, n), b, 0o600)
					}
				}
				rd, _ := images.Open(ref)
				man, err := plugin.Rewrite(rd, 1, "", plugin.RewriteOptions{Mode: plugin.ModeReduce})
				rd.Close()
				if err != nil || man == nil {
					t.Fatalf("reference rewrite: %v %v", man, err)
				}
				for _, fr := range man.Files {
					b, _ := os.ReadFile(filepath.Join(ref, fr.Name))
					want[fr.Name] = digest(b)
				}
			}
			// A stand-in for CRIU: pre-restore, then what CRIU would read,
			// then its exit (no post-restore: the resident puts the
			// originals back when CRIU is gone).
			out := filepath.Join(t.TempDir(), "seen")
			logf := filepath.Join(t.TempDir(), "log")
			script := `"$0" || exit 9
echo "criu=$$" > "$2"
for f in "$1"/mountpoints-*.img; do echo "$(basename "$f") $(sha256sum < "$f" | cut -c1-64)" >> "$2"; done
cat "$1"/mntv2-manifest.json >> "$2"`
			criu := exec.Command("sh", "-c", script, binary_, dir, out)
			criu.Env = append(os.Environ(), "CRTOOLS_SCRIPT_ACTION=pre-restore", "CRTOOLS_IMAGE_DIR="+dir, "MNTV2_LOG="+logf,
				"MNTV2_LOG_LEVEL=debug")
			if tc.env != "" {
				criu.Env = append(criu.Env, tc.env)
			}
			if b, err := criu.CombinedOutput(); err != nil {
				t.Fatalf("stand-in: %v\n%s", err, b)
			}
			seen, _ := os.ReadFile(out)
			pid := regexp.MustCompile(`criu=(\d+)`).FindSubmatch(seen)
			if pid == nil {
				t.Fatalf("stand-in output: %q", seen)
			}
			for name, sum := range want {
				if !strings.Contains(string(seen), name+" "+sum) {
					t.Errorf("CRIU read %s other than the Go rewrite makes (%s):\n%s", name, sum, seen)
				}
			}
			var man plugin.Manifest
			if i := strings.Index(string(seen), "{"); i < 0 || json.Unmarshal(seen[i:], &man) != nil {
				t.Fatalf("no manifest while CRIU ran:\n%s", seen)
			}
			if owner, _ := strconv.Atoi(string(pid[1])); man.Owner != owner || !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(man.Token) {
				t.Errorf("manifest owner %d token %q: want CRIU's pid %s and a new token", man.Owner, man.Token, pid[1])
			}
			wantMode := plugin.ModeReduce
			if strings.Contains(tc.env, "REDUCE=0") {
				wantMode = plugin.ModeStrip
			}
			if man.Mode != wantMode {
				t.Errorf("mode %q, want %q", man.Mode, wantMode)
			}
			waitHookDone(t, dir, before)
			// Which path rewrote: the resident says so in its log.
			log, _ := os.ReadFile(logf)
			if got := strings.Contains(string(log), "prepared rewrite in place"); got != tc.prepared {
				t.Errorf("prepared rewrite used: %v, want %v; log:\n%s", got, tc.prepared, log)
			}
		})
	}
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

package plugin

import (
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"
)

// The Notify rewrites ahead, once its watcher holds the lifeline; a
// process that dies (here: lets go of the lifeline) before post-restore
// has its images put back by the watcher, and one that closes the Notify
// has them put back by Close, byte-identical either way.
func TestNotifyLifeline(t *testing.T) {
	for _, closeIt := range []bool{false, true} {
		t.Run(fmt.Sprintf("close=%v", closeIt), func(t *testing.T) {
			dir := copyImages(t, "02-peers-no-common-root")
			before := snapshot(t, dir)
			n, err := NewNotify(dir, Settings{Config: Config{Strip: true, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}})
			if err != nil {
				t.Fatal(err)
			}
			if err := n.PreRestore(); err != nil {
				t.Fatal(err)
			}
			man, err := ReadManifest(n.dir)
			if err != nil || man == nil || len(man.Files) == 0 {
				t.Fatalf("after PreRestore: manifest %+v, %v: want the images rewritten", man, err)
			}
			if closeIt {
				if err := n.Close(); err != nil {
					t.Fatal(err)
				}
				sameSnapshot(t, "after Close", before, snapshot(t, dir))
				return
			}
			// As if the process died: the lifeline hangs up, and the
			// watcher (another process) puts the originals back.
			n.lifeline.Close()
			n.lifeline = nil
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				// (Not snapshot: a file it lists may be renamed before
				// it is read.)
				if got, err := tryDigests(dir); err == nil && fmt.Sprint(got) == fmt.Sprint(before) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			sameSnapshot(t, "after the lifeline's end", before, snapshot(t, dir))
			n.release()
			n.dir.Close()
		})
	}
}

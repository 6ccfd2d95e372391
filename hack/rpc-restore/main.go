// Command rpc-restore restores a checkpoint through go-criu's RPC (criu
// swrk) with mntv2's Notify: the e2e test of the RPC path, and an example
// of the one extra argument a Go program needs. mntv2's Notify has go-criu's
// Notify methods, which v7 (containerd, podman) and v8 (runc) define alike:
// --go-criu says which one restores.
//
//	rpc-restore --criu PATH --images DIR --root DIR --work DIR --pidfile FILE [--compat] [--go-criu 7|8]
//	            [--mntv2=false] [--log-level N]
//
// --mntv2=false restores with CRIU alone (no Notify): the baseline of
// hack/bench-criu.sh's RPC columns.
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"

	criu "github.com/checkpoint-restore/go-criu/v7"
	"github.com/mntv2/mntv2/plugin"
)

func main() {
	criuPath := flag.String("criu", "criu", "CRIU binary")
	imagesDir := flag.String("images", "", "images directory")
	root := flag.String("root", "", "root of the restored tree")
	work := flag.String("work", "", "work directory (logs)")
	pidfile := flag.String("pidfile", "", "write the restored root task's pid here")
	compat := flag.Bool("compat", false, "--mntns-compat-mode")
	version := flag.Int("go-criu", 7, "go-criu major version to restore with: 7 or 8")
	withMntv2 := flag.Bool("mntv2", true, "restore with mntv2's Notify (false: CRIU alone)")
	logLevel := flag.Int("log-level", 4, "CRIU's log level (restore-rpc.log in the work directory)")
	flag.Parse()
	if err := run(*criuPath, *imagesDir, *root, *work, *pidfile, *compat, *version, *withMntv2, int32(*logLevel)); err != nil {
		fmt.Fprintln(os.Stderr, "rpc-restore:", err)
		os.Exit(1)
	}
}

// pidNotify records the restored root task's pid; it embeds mntv2's Notify,
// or go-criu's NoNotify for CRIU alone.
type pidNotify struct {
	criu.Notify
	pid int32
}

func (n *pidNotify) PostRestore(pid int32) error {
	n.pid = pid
	return n.Notify.PostRestore(pid)
}

// restoreArgs is what both go-criu versions are given.
type restoreArgs struct {
	criu, root   string
	images, work int32
	compat       bool
	logLevel     int32
	notify       *pidNotify
}

func run(criuPath, imagesDir, root, work, pidfile string, compat bool, version int, withMntv2 bool, logLevel int32) error {
	img, err := os.Open(imagesDir)
	if err != nil {
		return err
	}
	defer img.Close()
	wd, err := os.Open(work)
	if err != nil {
		return err
	}
	defer wd.Close()
	a := restoreArgs{criu: criuPath, root: root, images: int32(img.Fd()), work: int32(wd.Fd()), compat: compat,
		logLevel: logLevel, notify: &pidNotify{Notify: criu.NoNotify{}}}
	var n *plugin.Notify
	if withMntv2 {
		settings, err := plugin.LoadSettings(os.Getenv)
		if err != nil {
			return err
		}
		if n, err = plugin.NewNotify(imagesDir, settings); err != nil {
			return err
		}
		a.notify.Notify = n
	}
	switch version {
	case 7:
		err = restoreV7(a)
	case 8:
		err = restoreV8(a)
	default:
		err = fmt.Errorf("--go-criu %d: want 7 or 8", version)
	}
	if n != nil {
		if cerr := n.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return err
	}
	return os.WriteFile(pidfile, []byte(strconv.Itoa(int(a.notify.pid))+"\n"), 0o644)
}

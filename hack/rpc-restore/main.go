// Command rpc-restore restores a checkpoint through go-criu's RPC (criu
// swrk) with mntv2's Notify: the e2e test of the RPC path, and an example
// of the one extra argument a Go program needs.
//
//	rpc-restore --criu PATH --images DIR --root DIR --work DIR --pidfile FILE [--compat]
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"

	criu "github.com/checkpoint-restore/go-criu/v7"
	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"github.com/mntv2/mntv2/plugin"
	"google.golang.org/protobuf/proto"
)

func main() {
	criuPath := flag.String("criu", "criu", "CRIU binary")
	imagesDir := flag.String("images", "", "images directory")
	root := flag.String("root", "", "root of the restored tree")
	work := flag.String("work", "", "work directory (logs)")
	pidfile := flag.String("pidfile", "", "write the restored root task's pid here")
	compat := flag.Bool("compat", false, "--mntns-compat-mode")
	flag.Parse()
	if err := run(*criuPath, *imagesDir, *root, *work, *pidfile, *compat); err != nil {
		fmt.Fprintln(os.Stderr, "rpc-restore:", err)
		os.Exit(1)
	}
}

// pidNotify records the restored root task's pid.
type pidNotify struct {
	*plugin.Notify
	pid int32
}

func (n *pidNotify) PostRestore(pid int32) error {
	n.pid = pid
	return n.Notify.PostRestore(pid)
}

func run(criuPath, imagesDir, root, work, pidfile string, compat bool) error {
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
	settings, err := plugin.LoadSettings(os.Getenv)
	if err != nil {
		return err
	}
	n, err := plugin.NewNotify(imagesDir, settings)
	if err != nil {
		return err
	}
	nfy := &pidNotify{Notify: n}
	c := criu.MakeCriu()
	c.SetCriuPath(criuPath)
	opts := &rpc.CriuOpts{
		ImagesDirFd:     proto.Int32(int32(img.Fd())),
		WorkDirFd:       proto.Int32(int32(wd.Fd())),
		LogFile:         proto.String("restore-rpc.log"),
		LogLevel:        proto.Int32(4),
		Root:            proto.String(root),
		RstSibling:      proto.Bool(true),
		AutoExtMnt:      proto.Bool(true),
		ExtSharing:      proto.Bool(true),
		ExtMasters:      proto.Bool(true),
		MntnsCompatMode: proto.Bool(compat),
	}
	err = c.Restore(opts, nfy)
	if cerr := n.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.WriteFile(pidfile, []byte(strconv.Itoa(int(nfy.pid))+"\n"), 0o644)
}

package main

import (
	criu "github.com/checkpoint-restore/go-criu/v7"
	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"google.golang.org/protobuf/proto"
)

// mntv2's Notify is a go-criu v7 Notify.
var _ criu.Notify = (*pidNotify)(nil)

func restoreV7(a restoreArgs) error {
	c := criu.MakeCriu()
	c.SetCriuPath(a.criu)
	return c.Restore(&rpc.CriuOpts{
		ImagesDirFd:     proto.Int32(a.images),
		WorkDirFd:       proto.Int32(a.work),
		LogFile:         proto.String("restore-rpc.log"),
		LogLevel:        proto.Int32(a.logLevel),
		Root:            proto.String(a.root),
		RstSibling:      proto.Bool(true),
		AutoExtMnt:      proto.Bool(true),
		ExtSharing:      proto.Bool(true),
		ExtMasters:      proto.Bool(true),
		MntnsCompatMode: proto.Bool(a.compat),
	}, a.notify)
}

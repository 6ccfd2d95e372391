package main

import (
	criu "github.com/checkpoint-restore/go-criu/v8"
	"github.com/checkpoint-restore/go-criu/v8/rpc"
)

// mntv2's Notify is a go-criu v8 Notify too: the interface is the same.
var _ criu.Notify = (*pidNotify)(nil)

func restoreV8(a restoreArgs) error {
	c := criu.MakeCriu()
	c.SetCriuPath(a.criu)
	return c.Restore(&rpc.CriuOpts{
		ImagesDirFd:     &a.images,
		WorkDirFd:       &a.work,
		LogFile:         ptr("restore-rpc.log"),
		LogLevel:        &a.logLevel,
		Root:            &a.root,
		RstSibling:      ptr(true),
		AutoExtMnt:      ptr(true),
		ExtSharing:      ptr(true),
		ExtMasters:      ptr(true),
		MntnsCompatMode: &a.compat,
	}, a.notify)
}

func ptr[T any](v T) *T { return &v }

package restore

import (
	"log/slog"

	"github.com/mntv2/mntv2/images"
)

// Options say where and how a plan is applied.
type Options struct {
	// Root is the directory every namespace's root mount is a bind of.
	Root string
	// PinDir receives mntns-<ID>: an nsfs bind that keeps each restored
	// namespace alive.
	PinDir string
	// Images is the images directory the plan was made from; tmpfs content
	// is read from it.
	Images *images.Dir
	// TmpfsLimit caps the bytes extracted into a tmpfs that has no size=
	// option (default 1 GiB).
	TmpfsLimit int64
	// Log receives a line per phase (default: slog.Default()).
	Log *slog.Logger

	// Live names the restored namespaces of a live plan (NewLivePlan), by
	// image namespace id.
	Live map[uint32]*LiveNamespace

	// Stop, when closed, makes Apply stop before its next step and roll
	// back (SIGTERM of mntv2 restore).
	Stop <-chan struct{}
	// Hooks are for tests and robustness runs only.
	Hooks Hooks

	// MountIDs fills NamespaceResult.Mounts with the new mount ids (a
	// statx per mount).
	MountIDs bool

	// UserNS is a user namespace (an nsfs path): the namespaces the
	// images say a container's user namespace owned are made owned by it
	// (Plan.Owners; its maps must be theirs).
	UserNS string

	// Check, when set, runs after the last step: an error rolls the
	// restore back as a failed step does.
	Check func() error
}

// Command mntv2 restores Linux mount namespaces from CRIU checkpoints,
// exactly, the mount-v2 way, and checks them against the images.
package main

import (
	"errors"
	"fmt"
	"github.com/mntv2/mntv2/internal/shortlived"
	"log/slog"
	"os"
	"runtime"
	"strings"

	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitOK       = 0
	exitDiffers  = 1 // verify found differences; restore failed
	exitBadInput = 2 // usage or input error
)

// exitError carries an exit code up to main.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// inputError marks an error in what the user gave: exit 2.
func inputError(err error) error { return &exitError{code: exitBadInput, err: err} }

func newRootCommand() *cobra.Command {
	var logLevel string
	root := &cobra.Command{
		Use:   "mntv2",
		Short: "Restore mount namespaces from CRIU checkpoints exactly",
		Long: `mntv2 reads the mount images of a CRIU checkpoint, restores the mount
namespaces they describe the mount-v2 way (every mount private first, then
peer groups and masters copied with MOVE_MOUNT_SET_GROUP), and verifies a live
or captured tree against the images.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return inputError(fmt.Errorf("--log-level %q: want debug, info, warn or error", logLevel))
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
			return nil
		},
	}
	root.PersistentFlags().StringVar(&logLevel, "log-level", "warn", "log level on stderr: debug, info, warn, error")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return inputError(fmt.Errorf("%w (see %s --help)", err, cmd.CommandPath()))
	})
	root.AddCommand(newShowCommand(), newPlanCommand(), newRestoreCommand(), newVerifyCommand(), newReleaseCommand(), newDumpCommand(),
		newCriuImagesCommand())
	return root
}

// The main goroutine keeps the main thread: a goroutine that enters another
// mount namespace on a locked thread ends that thread when it returns, but
// the runtime cannot end the main thread and would leave it, and the
// namespace, alive.
func init() { runtime.LockOSThread() }

func main() {
	shortlived.Tune()
	// With no arguments and CRIU's action in the environment, mntv2 is
	// CRIU's --action-script.
	if len(os.Args) == 1 && os.Getenv("CRTOOLS_SCRIPT_ACTION") != "" {
		os.Exit(runHook())
	}
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	root := newRootCommand()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	code := exitDiffers
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	} else if isUsageError(err) {
		code = exitBadInput
	}
	if msg := err.Error(); msg != "" {
		fmt.Fprintln(os.Stderr, "mntv2: "+msg)
	}
	return code
}

// isUsageError recognises cobra's own argument errors.
func isUsageError(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "accepts ", "requires at least", "required flag", "unknown flag", "unknown shorthand"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

// Package sysx is mntv2's one syscall error type and its retry of
// interrupted and raced calls.
package sysx

import (
	"errors"
	"syscall"
)

// Error is a failed syscall: its name, the object it failed on (a path;
// may be empty) and the cause (usually a syscall.Errno).
type Error struct {
	Call string
	Path string
	Err  error
}

func (e *Error) Error() string {
	if e.Path != "" {
		return e.Call + " " + e.Path + ": " + e.Err.Error()
	}
	return e.Call + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Wrap names the syscall call that failed with err; nil when err is.
func Wrap(call string, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Call: call, Err: err}
}

// WrapPath names the syscall call and the path it failed with err on; nil
// when err is.
func WrapPath(call, path string, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Call: call, Path: path, Err: err}
}

// Retries bounds Again's retries of EAGAIN: openat2 with RESOLVE_BENEATH
// answers it when a rename anywhere raced the lookup, and a process that
// renames without pause must not hold mntv2 forever.
const Retries = 256

// ErrRaced is the cause of a call that got EAGAIN Retries times.
var ErrRaced = errors.New("renames raced every lookup")

// Again calls fn again while it fails with EINTR, and with EAGAIN at most
// Retries times (then ErrRaced, which wraps EAGAIN).
func Again[T any](fn func() (T, error)) (T, error) {
	for try := 0; ; try++ {
		v, err := fn()
		switch {
		case err == syscall.EINTR:
		case err == syscall.EAGAIN && try < Retries:
		case err == syscall.EAGAIN:
			return v, errors.Join(ErrRaced, err)
		default:
			return v, err
		}
	}
}

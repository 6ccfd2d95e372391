package sysx

import (
	"errors"
	"syscall"
	"testing"
)

func TestAgain(t *testing.T) {
	calls := 0
	v, err := Again(func() (int, error) {
		calls++
		if calls < 3 {
			return -1, syscall.EINTR
		}
		return 7, nil
	})
	if v != 7 || err != nil || calls != 3 {
		t.Errorf("EINTR twice: %d, %v after %d calls", v, err, calls)
	}
	calls = 0
	_, err = Again(func() (int, error) { calls++; return -1, syscall.EAGAIN })
	if !errors.Is(err, ErrRaced) || !errors.Is(err, syscall.EAGAIN) || calls != Retries+1 {
		t.Errorf("EAGAIN always: %v after %d calls", err, calls)
	}
	if _, err := Again(func() (int, error) { return -1, syscall.ENOENT }); err != syscall.ENOENT {
		t.Errorf("ENOENT: %v", err)
	}
}

func TestError(t *testing.T) {
	if Wrap("open_tree", nil) != nil || WrapPath("openat2", "x", nil) != nil {
		t.Error("a nil error wrapped is not nil")
	}
	err := WrapPath("openat2", "tmp/a", syscall.ELOOP)
	if err.Error() != "openat2 tmp/a: "+syscall.ELOOP.Error() || !errors.Is(err, syscall.ELOOP) {
		t.Errorf("WrapPath: %v", err)
	}
	var se *Error
	if !errors.As(Wrap("move_mount", syscall.EINVAL), &se) || se.Call != "move_mount" {
		t.Errorf("Wrap: %#v", se)
	}
}

package restore

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"strings"

	"golang.org/x/sys/unix"
)

// fdWriter writes to a raw fd.
type fdWriter struct{ fd int }

func (w *fdWriter) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Write(w.fd, p[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

// isSparse says whether a header is a GNU sparse file, in the old GNU
// format or in PAX (criu/filesystems.c tmpfs_dump runs tar --sparse).
func isSparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// maxLogical caps the bytes of sparse files an extraction reads through:
// Go's reader gives their holes as zeros, so a hostile archive could make
// it read a petabyte of them. A sparse file may be much larger than its
// tmpfs; 16 times the size limit, and at least 16 GiB, is plenty.
func maxLogical(limit int64) int64 { return max(16*limit, 16<<30) }

// sparseBlock is the unit copySparse skips when it is all zeros: a page,
// tmpfs's allocation unit.
const sparseBlock = 4096

// copySparse writes size bytes from r to the new file fd, leaving a hole
// wherever a page-aligned block is all zeros, as GNU tar extracts a sparse
// file. It returns the bytes written (what the file takes in the tmpfs),
// failing beyond budget.
func copySparse(fd int, r io.Reader, size, budget int64) (int64, error) {
	buf := make([]byte, 64*sparseBlock)
	var off, written int64
	for off < size {
		n, err := io.ReadFull(r, buf[:min(int64(len(buf)), size-off)])
		if err != nil {
			return written, err
		}
		for b := 0; b < n; b += sparseBlock {
			blk := buf[b:min(b+sparseBlock, n)]
			if allZero(blk) {
				continue
			}
			if written += int64(len(blk)); written > budget {
				return written, errors.New("file data exceeds the tmpfs size limit")
			}
			for at := off + int64(b); len(blk) > 0; {
				m, err := unix.Pwrite(fd, blk, at)
				if err == unix.EINTR {
					continue
				}
				if err != nil {
					return written, sysErr("pwrite", err)
				}
				blk, at = blk[m:], at+int64(m)
			}
		}
		off += int64(n)
	}
	return written, sysErr("ftruncate", unix.Ftruncate(fd, size))
}

var zeroBlock [sparseBlock]byte

func allZero(b []byte) bool { return bytes.Equal(b, zeroBlock[:len(b)]) }

package images

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Magic numbers from CRIU's criu/include/magic.h.
const (
	MagicCommon      uint32 = 0x54564319
	MagicInventory   uint32 = 0x58313116
	MagicPstree      uint32 = 0x50273030
	MagicIDs         uint32 = 0x54432030
	MagicFS          uint32 = 0x51403912
	MagicMountpoints uint32 = 0x55563928
	MagicUserns      uint32 = 0x55474906
)

// Type is the kind of an image file.
type Type struct {
	Name  string
	Magic uint32
	// Common says whether the file starts with MagicCommon before its own
	// magic. Only the inventory image does not.
	Common bool
}

// The image types mntv2 reads and writes.
var (
	Inventory   = Type{Name: "inventory", Magic: MagicInventory}
	Pstree      = Type{Name: "pstree", Magic: MagicPstree, Common: true}
	IDs         = Type{Name: "ids", Magic: MagicIDs, Common: true}
	FS          = Type{Name: "fs", Magic: MagicFS, Common: true}
	Mountpoints = Type{Name: "mountpoints", Magic: MagicMountpoints, Common: true}
	Userns      = Type{Name: "userns", Magic: MagicUserns, Common: true}
)

// Limits bound what a reader accepts, so a hostile image cannot make it
// allocate without bound.
type Limits struct {
	// MaxRecord is the largest record payload accepted, in bytes.
	MaxRecord int
	// MaxFile is the largest image file accepted, in bytes.
	MaxFile int64
}

// DefaultLimits: 16 MiB per record (CRIU's own records are far smaller) and
// 256 MiB per file (a 50k-mount image is about 5 MiB).
var DefaultLimits = Limits{MaxRecord: 16 << 20, MaxFile: 256 << 20}

// Errors wrapped by *FormatError.
var (
	ErrTruncated   = errors.New("truncated")
	ErrBadMagic    = errors.New("wrong magic")
	ErrTooLarge    = errors.New("too large")
	ErrBadRecord   = errors.New("undecodable record")
	ErrMissingFile = errors.New("missing image")
)

// FormatError says which image file is bad, where, and why.
type FormatError struct {
	File   string
	Offset int64 // byte offset of the bad header or record, -1 if none
	Err    error
}

func (e *FormatError) Error() string {
	if e.Offset < 0 {
		return fmt.Sprintf("image %s: %v", e.File, e.Err)
	}
	return fmt.Sprintf("image %s: at byte offset %d: %v", e.File, e.Offset, e.Err)
}

func (e *FormatError) Unwrap() error { return e.Err }

// Image is one image file: its type and its records' payloads, in order.
type Image struct {
	File    string
	Type    Type
	Records [][]byte
}

// Decode reads a whole image from r, checking its magics and framing every
// record. name is used in errors. r is read to its end, or to lim.MaxFile+1.
func Decode(r io.Reader, name string, t Type, lim Limits) (*Image, error) {
	data, err := io.ReadAll(io.LimitReader(r, lim.MaxFile+1))
	if err != nil {
		return nil, &FormatError{File: name, Offset: -1, Err: err}
	}
	if int64(len(data)) > lim.MaxFile {
		return nil, &FormatError{File: name, Offset: -1,
			Err: fmt.Errorf("%w: file exceeds the %d byte cap", ErrTooLarge, lim.MaxFile)}
	}
	return Parse(data, name, t, lim)
}

// Parse frames an image held in memory. The records alias data.
func Parse(data []byte, name string, t Type, lim Limits) (*Image, error) {
	img := &Image{File: name, Type: t}
	off := 0
	magics := []uint32{t.Magic}
	if t.Common {
		magics = []uint32{MagicCommon, t.Magic}
	}
	for _, want := range magics {
		if len(data)-off < 4 {
			return nil, &FormatError{File: name, Offset: int64(off),
				Err: fmt.Errorf("%w: header ends after %d bytes", ErrTruncated, len(data))}
		}
		if got := binary.LittleEndian.Uint32(data[off:]); got != want {
			return nil, &FormatError{File: name, Offset: int64(off),
				Err: fmt.Errorf("%w: %#08x, want %#08x (%s image)", ErrBadMagic, got, want, t.Name)}
		}
		off += 4
	}
	for off < len(data) {
		if len(data)-off < 4 {
			return nil, &FormatError{File: name, Offset: int64(off),
				Err: fmt.Errorf("%w: record header has %d of 4 bytes", ErrTruncated, len(data)-off)}
		}
		size := binary.LittleEndian.Uint32(data[off:])
		if uint64(size) > uint64(lim.MaxRecord) {
			return nil, &FormatError{File: name, Offset: int64(off),
				Err: fmt.Errorf("%w: record of %d bytes exceeds the %d byte cap", ErrTooLarge, size, lim.MaxRecord)}
		}
		if uint64(len(data)-off-4) < uint64(size) {
			return nil, &FormatError{File: name, Offset: int64(off),
				Err: fmt.Errorf("%w: record of %d bytes has only %d", ErrTruncated, size, len(data)-off-4)}
		}
		start := off + 4
		img.Records = append(img.Records, data[start:start+int(size):start+int(size)])
		off = start + int(size)
	}
	return img, nil
}

// Encode writes the image: its magics, then every record framed.
func (img *Image) Encode(w io.Writer) error {
	var hdr [8]byte
	n := 0
	if img.Type.Common {
		binary.LittleEndian.PutUint32(hdr[0:], MagicCommon)
		n = 4
	}
	binary.LittleEndian.PutUint32(hdr[n:], img.Type.Magic)
	if _, err := w.Write(hdr[:n+4]); err != nil {
		return err
	}
	for _, rec := range img.Records {
		binary.LittleEndian.PutUint32(hdr[:4], uint32(len(rec)))
		if _, err := w.Write(hdr[:4]); err != nil {
			return err
		}
		if _, err := w.Write(rec); err != nil {
			return err
		}
	}
	return nil
}

// Bytes returns the encoded image.
func (img *Image) Bytes() []byte {
	size := 8
	for _, r := range img.Records {
		size += 4 + len(r)
	}
	var b bytes.Buffer
	b.Grow(size)
	_ = img.Encode(&b) // a bytes.Buffer never fails to write
	return b.Bytes()
}

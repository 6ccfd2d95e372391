package images

import (
	"encoding/json"
	"fmt"
)

// mntv2's dump-side record: what a live mount had that CRIU's images
// cannot carry (criu/proc_parse.c parse_mnt_flags reads no nosymfollow and
// ignores idmapped),
// written next to the images at post-dump, read at restore. Like every
// file mntv2 writes into an images directory, it is written crash-safely
// (WriteFile), and CRIU never reads it.

// ExtraName is the record's file name in an images directory.
const ExtraName = "mntv2-dump.json"

// ExtraSchema names the record's format; a reader refuses another.
const ExtraSchema = "mntv2.dump-extra/v1"

// Extra is the dump-side record.
type Extra struct {
	Schema string       `json:"schema"`
	Mounts []ExtraMount `json:"mounts"`
}

// ExtraMount is what one mount of the images had beyond its MntEntry.
type ExtraMount struct {
	NS    uint32 `json:"ns"`     // mount namespace id, as mountpoints-<ns>.img
	MntID uint32 `json:"mnt_id"` // MntEntry.mnt_id
	// Flags are per-mount MS_* flags the MntEntry lacks (nosymfollow).
	Flags uint32 `json:"flags,omitempty"`
	// IDMap is an idmapped mount's uid and gid maps (statmount,
	// Linux 6.15), as seen from the dumper's user namespace.
	IDMap *IDMaps `json:"idmap,omitempty"`
}

// ReadExtra reads the dump-side record; nil when there is none.
func (d *Dir) ReadExtra() (*Extra, error) {
	if !d.Exists(ExtraName) {
		return nil, nil
	}
	data, err := d.ReadAll(ExtraName)
	if err != nil {
		return nil, err
	}
	var x Extra
	if err := json.Unmarshal(data, &x); err != nil {
		return nil, &FormatError{File: ExtraName, Offset: -1, Err: fmt.Errorf("%w: %v", ErrBadRecord, err)}
	}
	if x.Schema != ExtraSchema {
		return nil, &FormatError{File: ExtraName, Offset: -1, Err: fmt.Errorf("%w: schema %q, want %q", ErrBadRecord, x.Schema, ExtraSchema)}
	}
	return &x, nil
}

// WriteExtra writes the dump-side record crash-safely.
func (d *Dir) WriteExtra(x *Extra) error {
	x.Schema = ExtraSchema
	data, err := json.MarshalIndent(x, "", "  ")
	if err != nil {
		return err
	}
	return d.WriteFile(ExtraName, append(data, '\n'), 0o600)
}

package plugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strings"

	"github.com/mntv2/mntv2/images"
	"golang.org/x/sys/unix"
)

// Prepared rewrites. pre-restore's rewrite is on the path of every restore:
// CRIU waits for it, and it needs the Go runtime (milliseconds to start)
// and the images read and planned. At post-dump, where mntv2 runs anyway,
// Prepare computes the reduce-mode rewrite once and leaves it beside the
// images: the new bytes of each image it rewrites (preparedPrefix+name)
// and PreparedName, the plan of the swap. At pre-restore the action
// script's C half (cmd/mntv2, before the Go runtime starts) checks that
// the images are the ones the rewrite was computed from, by the inode,
// size and modification time of every image, and makes the same on-disk
// state as commit: the manifest (its token and owner filled in), a second
// name for each original, one fsync of the directory, then each image
// replaced by a link of its prepared bytes. CRIU goes on at once; the
// resident then starts the Go runtime while CRIU restores the tasks, and
// takes the rewrite from the manifest (preparedRewrite). The Notify (an RPC
// restore, no action script) takes it in Go at its pre-restore
// (preparedPending: the same stamps, then commit as any rewrite). Anything
// unexpected (another rewrite in place, an image changed, added or
// removed, a setting other than reduce, a test pause) leaves it to the Go
// path, which rewrites as before; the prepared files are never changed at
// restore, so the images directory stays byte-identical.
//
// PreparedName's lines:
//
//	mntv2-prepared 1
//	stamp INO SIZE MTIME_SEC MTIME_NSEC NAME   every image (*.img, and mntv2-dump.json)
//	swap NAME                                  an image to replace by preparedPrefix+NAME
//	manifest                                   the rest is the manifest, with tokenMark and ownerMark
const (
	PreparedName   = "mntv2-prepared"
	preparedPrefix = "mntv2-prepared-"
	preparedHeader = "mntv2-prepared 1"
	tokenMark      = "@MNTV2-TOKEN@"
	ownerMark      = -1
)

// Prepare computes the reduce-mode rewrite of d's images and leaves it
// prepared for pre-restore (see above). When nothing is to be reduced it
// only removes an older preparation.
func Prepare(d *images.Dir, log *slog.Logger) error {
	if err := removePrepared(d); err != nil {
		return err
	}
	reason := ""
	p, err := planRewrite(d, ownerMark, tokenMark, RewriteOptions{Mode: ModeReduce, Reason: &reason})
	if err != nil {
		return err
	}
	if p == nil || p.man.Mode != ModeReduce || len(p.man.Files) == 0 {
		if reason == "" {
			reason = "no image to rewrite"
		}
		log.Debug("post-dump: no rewrite prepared: " + reason)
		return nil
	}
	man, err := json.MarshalIndent(p.man, "", "  ")
	if err != nil {
		return err
	}
	for _, fr := range p.man.Files {
		if err := d.WriteFileUnsynced(preparedPrefix+fr.Name, p.rewritten[fr.Name], 0o600); err != nil {
			return err
		}
	}
	stamps, err := stampImages(d)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	b.WriteString(preparedHeader + "\n")
	for _, st := range stamps {
		b.WriteString(st + "\n")
	}
	for _, fr := range p.man.Files {
		b.WriteString("swap " + fr.Name + "\n")
	}
	b.WriteString("manifest\n")
	b.Write(man)
	// Written last, and durable with the prepared images' names.
	if err := d.WriteFile(PreparedName, b.Bytes(), 0o600); err != nil {
		return err
	}
	log.Debug("post-dump: rewrite prepared for pre-restore", "file", PreparedName, "images", len(p.man.Files), "kept", len(p.man.Kept))
	return nil
}

// stampImages is a stamp line of every image of d, in name order.
func stampImages(d *images.Dir) ([]string, error) {
	names, err := d.Names()
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	var out []string
	for _, n := range names {
		if !stamped(n) {
			continue
		}
		if strings.ContainsAny(n, " \t\n") {
			return nil, fmt.Errorf("image name %q has white space", n)
		}
		var st unix.Stat_t
		if err := unix.Fstatat(d.Fd(), n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return nil, fmt.Errorf("stat %s: %w", n, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return nil, fmt.Errorf("%s is not a regular file", n)
		}
		out = append(out, fmt.Sprintf("stamp %d %d %d %d %s", st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec, n))
	}
	return out, nil
}

// stamped says whether name is one of the images a prepared rewrite was
// computed from (cmd/mntv2's C half has the same rule).
func stamped(name string) bool {
	if strings.HasPrefix(name, "mntv2-") || strings.HasPrefix(name, ".mntv2-") {
		return name == images.ExtraName
	}
	return strings.HasSuffix(name, ".img")
}

// removePrepared removes a preparation of d.
func removePrepared(d *images.Dir) error {
	names, err := d.Names()
	if err != nil {
		return err
	}
	for _, n := range names {
		if n == PreparedName || strings.HasPrefix(n, preparedPrefix) {
			if err := d.Remove(n); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// preparedRewrite is what post-restore needs of a prepared rewrite the
// action script's C half made with token: its manifest, and the mounts of
// the original images (under their second names).
func preparedRewrite(d *images.Dir, token string) (*rewritten, error) {
	man, err := ReadManifest(d)
	if err != nil {
		return nil, err
	}
	if man == nil || man.Token != token {
		return nil, fmt.Errorf("the prepared rewrite %s is not in place", token)
	}
	swapped := map[string]bool{}
	for _, fr := range man.Files {
		swapped[fr.Name] = true
	}
	input, err := readOriginals(d, func(name string) string {
		if swapped[name] {
			return backupPrefix + name
		}
		return name
	})
	if err != nil {
		return nil, err
	}
	return &rewritten{man: man, input: input}, nil
}

// preparedPending is the rewrite Prepare left beside d's images, for owner
// and token, as planRewrite would compute it: what the action script's C
// half swaps in, for a pre-restore in Go (the Notify). It is nil, with why,
// unless the images are exactly those it was prepared from.
func preparedPending(d *images.Dir, owner int, token string) (*pendingRewrite, string, error) {
	if !d.Exists(PreparedName) {
		return nil, "no rewrite was prepared at dump", nil
	}
	data, err := d.ReadAll(PreparedName)
	if err != nil {
		return nil, "", err
	}
	head, manifest, ok := bytes.Cut(data, []byte("\nmanifest\n"))
	lines := strings.Split(string(head), "\n")
	if !ok || lines[0] != preparedHeader {
		return nil, PreparedName + " is not a prepared rewrite this mntv2 reads", nil
	}
	var stamps, swaps []string
	for _, l := range lines[1:] {
		switch {
		case strings.HasPrefix(l, "stamp "):
			stamps = append(stamps, l)
		case strings.HasPrefix(l, "swap "):
			swaps = append(swaps, strings.TrimPrefix(l, "swap "))
		default:
			return nil, fmt.Sprintf("%s has a line %q", PreparedName, l), nil
		}
	}
	now, err := stampImages(d)
	if err != nil {
		return nil, "", err
	}
	if !slices.Equal(now, stamps) {
		return nil, "the images changed since the rewrite was prepared", nil
	}
	man := &Manifest{}
	if err := json.Unmarshal(manifest, man); err != nil {
		return nil, fmt.Sprintf("%s: its manifest: %v", PreparedName, err), nil
	}
	if man.Token != tokenMark || man.Owner != ownerMark || man.Mode != ModeReduce || len(man.Files) != len(swaps) {
		return nil, PreparedName + " does not hold a reduce-mode rewrite", nil
	}
	rewritten := make(map[string][]byte, len(swaps))
	for i, name := range swaps {
		if man.Files[i].Name != name {
			return nil, PreparedName + ": its manifest and its swaps differ", nil
		}
		if rewritten[name], err = d.ReadAll(preparedPrefix + name); err != nil {
			return nil, "", err
		}
	}
	man.Token, man.Owner = token, owner
	return &pendingRewrite{man: man, rewritten: rewritten}, "", nil
}

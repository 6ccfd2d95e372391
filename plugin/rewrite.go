// Package plugin plugs mntv2 into a CRIU restore ("strip and reapply"):
//
//   - pre-restore: every mountpoints-*.img is rewritten without sharing
//     (shared_id, master_id and the MS_SHARED/MS_SLAVE bits cleared), plus
//     the helper mounts a live restore needs; the original bytes are kept
//     crash-safely, so CRIU restores an all-private tree with any algorithm.
//   - post-restore (tasks restored, still stopped): the originals come back,
//     the restored namespaces are found through the restored tasks, their
//     mounts matched to the images, and the engine's sharing phase applies
//     peer groups, masters and unbindable; then each namespace is verified
//     against the images. Any error makes CRIU abort the restore.
//   - whatever happens, the images directory ends up holding its original
//     files: post-restore puts them back first; a watcher started at
//     pre-restore puts them back if CRIU exits without a post-restore; and
//     every pre-restore, and `mntv2 criu-images restore DIR`, start by
//     recovering a rewrite that was cut off.
//
// Hook runs the plugin as CRIU's --action-script; Notify is the same for
// go-criu RPC users.
package plugin

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/restore"
	"golang.org/x/sys/unix"
)

// Names mntv2 uses in an images directory.
const (
	ManifestName = "mntv2-manifest.json"
	backupPrefix = "mntv2-orig-"
	tempPrefix   = ".mntv2-tmp-"
)

// Manifest records a rewrite of an images directory. It is written before
// any image changes and removed only after every original is back. Version
// 2 stores each helper mount as the record CRIU reads (its MntEntry);
// version 1, which mntv2 still reads, stored them as Go structs.
type Manifest struct {
	Version int    `json:"version"`
	Token   string `json:"token"` // names this rewrite, for its watcher
	Owner   int    `json:"owner"` // pid of the CRIU process it was made for (Notify: the restoring process)
	// Files are the rewritten images; each original is kept as
	// mntv2-orig-<name> until it is renamed back.
	Files []FileRecord `json:"files"`
	// Helpers are the mounts added to the rewritten images.
	Helpers []restore.HelperMount `json:"helpers,omitempty"`
	// Mode is how the images were rewritten: "strip" (every mount, no
	// sharing; also when empty) or "reduce" (Kept only, no sharing:
	// post-restore makes the rest).
	Mode string `json:"mode,omitempty"`
	// Kept are the mounts left to CRIU in reduce mode, and why.
	Kept []KeptMount `json:"kept,omitempty"`
}

// ManifestVersion is the version of the manifests Rewrite writes.
const ManifestVersion = 2

// helperRecord is a helper mount in a version 2 manifest.
type helperRecord struct {
	NS    uint32 `json:"ns"`
	Group uint32 `json:"group"`
	Entry []byte `json:"mnt_entry"` // as a record of mountpoints-<ns>.img
}

// MarshalJSON writes m in the format of its Version.
func (m *Manifest) MarshalJSON() ([]byte, error) {
	type plain Manifest
	if m.Version < 2 {
		return json.Marshal((*plain)(m))
	}
	out := struct {
		*plain
		Helpers []helperRecord `json:"helpers,omitempty"`
	}{plain: (*plain)(m)}
	for _, h := range m.Helpers {
		b, err := images.MarshalMount(forest.ToImageMount(&h.Mount))
		if err != nil {
			return nil, err
		}
		out.Helpers = append(out.Helpers, helperRecord{NS: h.NS, Group: h.Group, Entry: b})
	}
	return json.Marshal(out)
}

// UnmarshalJSON reads a manifest of version 1 or 2.
func (m *Manifest) UnmarshalJSON(data []byte) error {
	type plain Manifest
	var in struct {
		*plain
		Helpers json.RawMessage `json:"helpers,omitempty"`
	}
	in.plain = (*plain)(m)
	if err := json.Unmarshal(data, &in); err != nil {
		return err
	}
	m.Helpers = nil
	switch {
	case m.Version > ManifestVersion:
		return fmt.Errorf("version %d, of a newer mntv2 (this one reads 1 to %d)", m.Version, ManifestVersion)
	case len(in.Helpers) == 0:
	case m.Version < 2:
		return json.Unmarshal(in.Helpers, &m.Helpers)
	default:
		var recs []helperRecord
		if err := json.Unmarshal(in.Helpers, &recs); err != nil {
			return err
		}
		for _, r := range recs {
			e, err := images.UnmarshalMount(r.Entry)
			if err != nil {
				return fmt.Errorf("helper of group %d: %w", r.Group, err)
			}
			m.Helpers = append(m.Helpers, restore.HelperMount{NS: r.NS, Group: r.Group, Mount: forest.FromImageMount(&e)})
		}
	}
	return nil
}

// KeptMount is a mount left to CRIU in reduce mode.
type KeptMount struct {
	restore.MountRef
	Why string `json:"why"`
}

// The rewrite modes.
const (
	ModeStrip  = "strip"
	ModeReduce = "reduce"
)

// KeptSet is the manifest's kept mounts, as a live plan takes them; nil
// in strip mode.
func (m *Manifest) KeptSet() map[restore.MountRef]string {
	if m == nil || m.Mode != ModeReduce {
		return nil
	}
	out := make(map[restore.MountRef]string, len(m.Kept))
	for _, k := range m.Kept {
		out[k.MountRef] = k.Why
	}
	return out
}

// FileRecord is one rewritten image and the digest of its original bytes.
type FileRecord struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
}

// ErrReadOnly means the images directory cannot be written: the rewrite
// (and so the restore) cannot go on without changing CRIU's behaviour.
var ErrReadOnly = errors.New("images directory is not writable: mntv2 must rewrite mountpoints-*.img (the originals are kept) before CRIU reads them")

// Strip rewrites the mountpoints images of d without sharing, keeping the
// originals, for the CRIU process owner. It first recovers any earlier
// rewrite, so running it twice, or after a crash, starts from the
// originals. It returns nil when no image needs a change.
// The rewrite is named by token (a new one when empty): its watcher knows
// it by that. fail, when set, runs before each write (tests use it to stop
// the rewrite there, as a crash would).
func Strip(d *images.Dir, owner int, token string, fail func(step string) error) (*Manifest, error) {
	return Rewrite(d, owner, token, RewriteOptions{Mode: ModeStrip, Fail: fail})
}

// RewriteOptions say how Rewrite rewrites.
type RewriteOptions struct {
	// Mode is ModeStrip or ModeReduce. In reduce mode CRIU is left the
	// mounts it must restore itself (restore.Reduce); when the images may
	// name mounts mntv2 cannot tell (images.MountRefs.KeepAll), or nothing
	// can be left out, it strips instead and says why in Reason.
	Mode string
	// Fail, when set, runs before each write (tests stop the rewrite
	// there, as a crash would).
	Fail func(step string) error
	// Reason receives why a reduce was a strip.
	Reason *string
	// Originals, when set, receives the mounts of the original images.
	Originals *[]forest.NamespaceMounts
	// Planned, when set, receives the manifest once the rewrite is
	// computed, before anything is written (Originals are set then).
	Planned func(man *Manifest)
	// Prepared, when set, has the rewrite prepared at dump (Prepare)
	// taken in reduce mode, if the images are those it was prepared from,
	// instead of computing it again; it receives why not, or "".
	Prepared *string
}

// Rewrite rewrites the mountpoints images of d for the CRIU process owner,
// keeping the originals: without sharing, and in reduce mode with only the
// mounts CRIU must restore. It first recovers any earlier rewrite, so
// running it twice, or after a crash, starts from the originals. It returns
// nil when no image needs a change.
func Rewrite(d *images.Dir, owner int, token string, opt RewriteOptions) (*Manifest, error) {
	fail := opt.Fail
	if fail == nil {
		fail = func(string) error { return nil }
	}
	if _, err := Recover(d); err != nil {
		return nil, err
	}
	var p *pendingRewrite
	var err error
	if opt.Prepared != nil && opt.Mode == ModeReduce {
		if token == "" {
			token = NewToken()
		}
		if p, *opt.Prepared, err = preparedPending(d, owner, token); err != nil {
			return nil, err
		}
		if p != nil && opt.Originals != nil {
			if *opt.Originals, err = readOriginals(d, nil); err != nil {
				return nil, err
			}
		}
	}
	if p == nil {
		if p, err = planRewrite(d, owner, token, opt); err != nil || p == nil {
			return nil, err
		}
	}
	if opt.Planned != nil {
		opt.Planned(p.man)
	}
	return p.commit(d, fail)
}

// readOriginals reads the mounts of d's original images, as planRewrite
// gives them in RewriteOptions.Originals; file names the file that holds
// each mountpoints image now (nil: its own name).
func readOriginals(d *images.Dir, file func(name string) string) ([]forest.NamespaceMounts, error) {
	ids, err := d.MountNamespaces()
	if err != nil {
		return nil, err
	}
	input := make([]forest.NamespaceMounts, len(ids))
	for i, id := range ids {
		name := images.MountpointsFile(id)
		if file != nil {
			name = file(name)
		}
		if _, _, input[i], err = readMountpoints(d, id, name); err != nil {
			return nil, err
		}
	}
	return input, addRecords(d, input)
}

// addRecords gives the mounts of d's images what mntv2's dump-side record
// and the namespaces' owners say of them, as forest.ImageNamespaces does
// once the originals are back.
func addRecords(d *images.Dir, input []forest.NamespaceMounts) error {
	x, err := d.ReadExtra()
	if err != nil {
		return err
	}
	forest.ApplyExtra(input, x)
	return forest.ApplyOwners(d, input)
}

// readMountpoints reads the mountpoints image of namespace id from file of
// d (its own name, or the second name of an original): its bytes, the
// image and its mounts.
func readMountpoints(d *images.Dir, id uint32, file string) ([]byte, *images.Image, forest.NamespaceMounts, error) {
	data, err := d.ReadAll(file)
	if err != nil {
		return nil, nil, forest.NamespaceMounts{}, err
	}
	img, err := images.Parse(data, images.MountpointsFile(id), images.Mountpoints, d.Limits)
	if err != nil {
		return nil, nil, forest.NamespaceMounts{}, err
	}
	ms, err := forest.FromImage(img)
	if err != nil {
		return nil, nil, forest.NamespaceMounts{}, err
	}
	return data, img, forest.NamespaceMounts{ID: id, Mounts: ms}, nil
}

// pendingRewrite is a rewrite computed and not yet written: its manifest
// and the new bytes of each image it lists.
type pendingRewrite struct {
	man       *Manifest
	rewritten map[string][]byte
}

// planRewrite computes the rewrite of d's images (see Rewrite) and writes
// nothing; nil when no image needs a change.
func planRewrite(d *images.Dir, owner int, token string, opt RewriteOptions) (*pendingRewrite, error) {
	reason := opt.Reason
	if reason == nil {
		reason = new(string)
	}
	// Each image is read once: its bytes give the digest, the forest (for
	// the helpers) and the stripped image.
	ids, err := d.MountNamespaces()
	if err != nil {
		return nil, err
	}
	origs := make([][]byte, len(ids))
	imgs := make([]*images.Image, len(ids))
	input := make([]forest.NamespaceMounts, len(ids))
	for i, id := range ids {
		name := images.MountpointsFile(id)
		if origs[i], imgs[i], input[i], err = readMountpoints(d, id, name); err != nil {
			return nil, err
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("images %s: no mountpoints-*.img", d.Path())
	}
	f, err := forest.Build(input)
	if err != nil {
		return nil, fmt.Errorf("images %s: %w", d.Path(), err)
	}
	if opt.Originals != nil {
		if err := addRecords(d, input); err != nil {
			return nil, err
		}
		*opt.Originals = input
	}
	if token == "" {
		token = NewToken()
	}
	man := &Manifest{Version: ManifestVersion, Token: token, Owner: owner, Mode: ModeStrip}
	var keep map[uint32]bool
	if opt.Mode == ModeReduce {
		var err error
		if keep, *reason, err = reduce(d, f, man); err != nil {
			return nil, err
		}
	}
	byNS := map[uint32][]images.Mount{}
	if keep == nil {
		helpers, err := restore.LiveHelpers(f)
		if err != nil {
			return nil, err
		}
		for _, h := range helpers {
			byNS[h.NS] = append(byNS[h.NS], forest.ToImageMount(&h.Mount))
		}
		man.Helpers = helpers
	}
	rewritten := map[string][]byte{}
	for i, id := range ids {
		name := images.MountpointsFile(id)
		var out *images.Image
		var err error
		if keep != nil {
			// Record j is mount j of the image.
			idx := make([]bool, len(input[i].Mounts))
			for j, m := range input[i].Mounts {
				idx[j] = keep[m.ID]
			}
			out, _, err = imgs[i].KeepRecords(idx)
		} else {
			out, _, err = imgs[i].StripSharing()
		}
		if err != nil {
			return nil, err
		}
		if err := out.AppendMounts(byNS[id]); err != nil {
			return nil, err
		}
		if bytes.Equal(out.Bytes(), origs[i]) {
			continue
		}
		sum := sha256.Sum256(origs[i])
		man.Files = append(man.Files, FileRecord{Name: name, SHA256: hex.EncodeToString(sum[:])})
		rewritten[name] = out.Bytes()
	}
	if len(man.Files) == 0 && !d.Exists(images.ExtraName) {
		return nil, nil
	}
	return &pendingRewrite{man: man, rewritten: rewritten}, nil
}

// commit writes the rewrite p into d, crash-safely: the manifest, a second
// name for each original, then the new images.
func (p *pendingRewrite) commit(d *images.Dir, fail func(step string) error) (*Manifest, error) {
	man, rewritten := p.man, p.rewritten
	// With nothing to rewrite but mntv2's dump-side record, the manifest
	// alone tells post-restore to give the mounts what CRIU cannot.
	// 1. The manifest: from here on, Recover knows what to undo.
	if err := fail("manifest"); err != nil {
		return nil, err
	}
	data, _ := json.MarshalIndent(man, "", "  ")
	// Its name is made durable with the links' below (one fsync of the
	// directory for both), before any image changes. Its bytes need no
	// fsync: Recover puts every second name back without them (a manifest
	// it cannot read only loses the digests' check), and only a crash of
	// the machine, which ends the watcher too, can lose them.
	if err := d.WriteFileNoSync(ManifestName, data, 0o600); err != nil {
		if errors.Is(err, unix.EROFS) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("%w: %v", ErrReadOnly, err)
		}
		return nil, err
	}
	// 2. Keep each original under a second name (a hard link: the same
	// inode, no copy), then 3. replace the image.
	for _, fr := range man.Files {
		if err := fail("backup " + fr.Name); err != nil {
			return man, err
		}
		if err := unix.Linkat(d.Fd(), fr.Name, d.Fd(), backupPrefix+fr.Name, 0); err != nil {
			return man, undo(d, fmt.Errorf("keep original %s: %w", fr.Name, err))
		}
	}
	if err := d.Sync(); err != nil {
		return man, undo(d, err)
	}
	for _, fr := range man.Files {
		if err := fail("rewrite " + fr.Name); err != nil {
			return man, err
		}
		// No fsync after, of the directory or the bytes: crashed before
		// the new name is durable, the original is there under both
		// names, and Recover drops the second; after, Recover puts the
		// original back over whatever the new file holds.
		if err := d.WriteFileNoSync(fr.Name, rewritten[fr.Name], 0o600); err != nil {
			return man, undo(d, fmt.Errorf("rewrite %s: %w", fr.Name, err))
		}
	}
	return man, nil
}

// reduce computes the mounts CRIU must restore itself and records them in
// man (reduce mode); nil and why when every mount must stay CRIU's.
func reduce(d *images.Dir, f *forest.Forest, man *Manifest) (map[uint32]bool, string, error) {
	refs, err := d.MountRefs()
	if err != nil {
		return nil, "", err
	}
	if refs.KeepAll != "" {
		return nil, refs.KeepAll, nil
	}
	rootNS, _, err := d.RootMountNamespace()
	if err != nil {
		return nil, "", err
	}
	red := restore.Reduce(f, rootNS, refs.IDs, refs.Devs)
	if red.Dropped == 0 {
		return nil, "CRIU must restore every mount itself", nil
	}
	keep := make(map[uint32]bool, len(red.Kept))
	for ref, why := range red.Kept {
		keep[ref.Mount] = true
		man.Kept = append(man.Kept, KeptMount{MountRef: ref, Why: why})
	}
	slices.SortFunc(man.Kept, func(a, b KeptMount) int {
		return cmp.Or(cmp.Compare(a.NS, b.NS), cmp.Compare(a.Mount, b.Mount))
	})
	man.Mode = ModeReduce
	return keep, "", nil
}

// NewToken names a rewrite.
func NewToken() string {
	var rnd [16]byte
	_, _ = rand.Read(rnd[:])
	return hex.EncodeToString(rnd[:])
}

// undo recovers after a failed rewrite and returns err (joined with a
// recovery failure, if any).
func undo(d *images.Dir, err error) error {
	if _, rerr := Recover(d); rerr != nil {
		return errors.Join(err, rerr)
	}
	return err
}

// ReadManifest reads the manifest of d; nil when there is none.
func ReadManifest(d *images.Dir) (*Manifest, error) {
	if !d.Exists(ManifestName) {
		return nil, nil
	}
	data, err := d.ReadAll(ManifestName)
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", ManifestName, err)
	}
	return &m, nil
}

// Recover puts back every original an interrupted or finished rewrite
// kept, checks their digests, removes mntv2's temporary files and the
// manifest, and says whether there was anything to recover. It is
// idempotent and safe to run at any point of a crash.
func Recover(d *images.Dir) (bool, error) { return recoverImages(d, true) }

// recoverUnsynced is Recover without its fsyncs of the directory, for
// post-restore, while CRIU waits: a crash before the names are durable
// leaves a rewrite the next Recover finishes (whichever of its steps the
// disk kept). The caller syncs the directory once CRIU goes on.
func recoverUnsynced(d *images.Dir) (bool, error) { return recoverImages(d, false) }

func recoverImages(d *images.Dir, sync bool) (bool, error) {
	names, err := d.Names()
	if err != nil {
		return false, err
	}
	man, merr := ReadManifest(d)
	slices.Sort(names)
	found := false
	var errs []error
	for _, n := range names {
		orig, ok := strings.CutPrefix(n, backupPrefix)
		if !ok {
			continue
		}
		found = true
		if sameFile(d, n, orig) {
			// Killed after the link, before the rewrite: both names are the
			// original (and rename between two links of one inode does
			// nothing), so drop the second name.
			if err := d.Remove(n); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if err := unix.Renameat(d.Fd(), n, d.Fd(), orig); err != nil {
			errs = append(errs, fmt.Errorf("put back %s: %w", orig, err))
		}
	}
	for _, n := range names {
		if strings.HasPrefix(n, tempPrefix) {
			found = true
			if err := d.Remove(n); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return found, errors.Join(errs...)
	}
	if !found && man == nil && merr == nil {
		return false, nil // nothing was here: nothing to make durable
	}
	if sync {
		if err := d.Sync(); err != nil {
			return found, err
		}
	}
	if man != nil {
		for _, fr := range man.Files {
			if err := checkDigest(d, fr); err != nil {
				return true, err
			}
		}
	}
	if merr != nil || man != nil || d.Exists(ManifestName) {
		found = true
		if err := d.Remove(ManifestName); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return true, err
		}
		if sync {
			if err := d.Sync(); err != nil {
				return true, err
			}
		}
	}
	return found, nil
}

// sameFile says whether names a and b of d are links of one inode.
func sameFile(d *images.Dir, a, b string) bool {
	var sa, sb unix.Stat_t
	if unix.Fstatat(d.Fd(), a, &sa, unix.AT_SYMLINK_NOFOLLOW) != nil || unix.Fstatat(d.Fd(), b, &sb, unix.AT_SYMLINK_NOFOLLOW) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func checkDigest(d *images.Dir, fr FileRecord) error {
	data, err := d.ReadAll(fr.Name)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	if want, _ := hex.DecodeString(fr.SHA256); !bytes.Equal(sum[:], want) {
		return fmt.Errorf("%s: after recovery its sha256 is %x, the original's was %s", fr.Name, sum, fr.SHA256)
	}
	return nil
}

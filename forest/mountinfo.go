package forest

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/mntv2/mntv2/images"
)

// deletedSuffix is how mountinfo marks a mount whose root was unlinked.
const deletedSuffix = "//deleted"

// FromMountinfo reads one namespace's mountinfo (the format of
// /proc/PID/mountinfo) and gives its mounts, unvalidated, as namespace nsID.
func FromMountinfo(r io.Reader, nsID uint32) (NamespaceMounts, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return NamespaceMounts{}, fmt.Errorf("parse mountinfo: %w", err)
	}
	p := newMountinfoParser(nsID)
	if err := p.feed(data); err != nil {
		return NamespaceMounts{}, err
	}
	return p.finish()
}

// mountinfoParser parses mountinfo in pieces as they are read, each
// ending anywhere: the complete lines of each piece as it comes.
type mountinfoParser struct {
	carry string // the piece's last line, not ended yet
	infos []info // scratch
	out   NamespaceMounts
}

func newMountinfoParser(nsID uint32) *mountinfoParser {
	return &mountinfoParser{out: NamespaceMounts{ID: nsID}}
}

// feed parses the lines that b completes.
func (p *mountinfoParser) feed(b []byte) error {
	// One string per piece: every field is a substring of it (a
	// restore's verification parses thousands of lines).
	s := p.carry + string(b)
	end := strings.LastIndexByte(s, '\n') + 1
	p.carry = s[end:]
	return p.lines(s[:end])
}

// finish parses what is left and gives the mounts.
func (p *mountinfoParser) finish() (NamespaceMounts, error) {
	if err := p.lines(p.carry); err != nil {
		return NamespaceMounts{}, err
	}
	p.carry = ""
	return p.out, nil
}

func (p *mountinfoParser) lines(s string) error {
	infos, err := parseLines(s, p.infos[:0])
	p.infos = infos
	if err != nil {
		return fmt.Errorf("parse mountinfo: %w", err)
	}
	for i := range infos {
		in := &infos[i]
		m, err := fromInfo(in)
		if err != nil {
			return fmt.Errorf("parse mountinfo: mount %d (%q): %w", in.ID, in.Mountpoint, err)
		}
		p.out.Mounts = append(p.out.Mounts, m)
	}
	return nil
}

// info is one line of mountinfo (proc(5)), its paths unescaped:
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// Parsed here, not with moby/sys/mountinfo (whose parser builds on Linux
// only, and reads a malformed number as 0): the model builds and is
// tested on any OS. A Linux test checks both agree on real tables.
type info struct {
	ID, Parent, Major, Minor int
	Root, Mountpoint         string
	Options, Optional        string
	FSType, Source           string
	VFSOptions               string
}

func parseMountinfo(r io.Reader) ([]*info, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	infos, err := parseLines(string(data), nil)
	if err != nil {
		return nil, err
	}
	out := make([]*info, len(infos))
	for i := range infos {
		out[i] = &infos[i]
	}
	return out, nil
}

// parseLines appends the lines of all to infos.
func parseLines(all string, infos []info) ([]info, error) {
	infos = slices.Grow(infos, strings.Count(all, "\n")+1)
	var f []string
	var at []int // where each field of f starts in its line
	for len(all) > 0 {
		line, rest, _ := strings.Cut(all, "\n")
		all = rest
		if line == "" {
			continue
		}
		f, at = f[:0], at[:0]
		for i := 0; ; {
			j := strings.IndexByte(line[i:], ' ')
			if j < 0 {
				f, at = append(f, line[i:]), append(at, i)
				break
			}
			f, at = append(f, line[i:i+j]), append(at, i)
			i += j + 1
		}
		if len(f) < 10 {
			return nil, fmt.Errorf("line %q: %d fields, want at least 10", line, len(f))
		}
		sep := len(f) - 4
		for f[sep] != "-" {
			if sep--; sep < 6 {
				return nil, fmt.Errorf("line %q: no \"-\" separator", line)
			}
		}
		var n [4]int
		major, minor, ok := strings.Cut(f[2], ":")
		for i, v := range [4]string{f[0], f[1], major, minor} {
			x, err := strconv.Atoi(v)
			if err != nil || !ok {
				return nil, fmt.Errorf("line %q: field %q is not a number", line, v)
			}
			n[i] = x
		}
		// Fields a to b-1, as strings.Join(f[a:b], " ") gives them.
		join := func(a, b int) string {
			if a >= b {
				return ""
			}
			return line[at[a] : at[b-1]+len(f[b-1])]
		}
		infos = append(infos, info{ID: n[0], Parent: n[1], Major: n[2], Minor: n[3],
			Root: unescape(f[3]), Mountpoint: unescape(f[4]), Options: f[5],
			Optional: join(6, sep), FSType: unescape(f[sep+1]), Source: unescape(f[sep+2]),
			VFSOptions: join(sep+3, len(f))})
	}
	return infos, nil
}

// unescape undoes mountinfo's octal escapes (\040 for a space, \011,
// \012, \134 for a backslash, \043).
func unescape(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '\\' && i+3 < len(s) && (s[i+1] == '0' || s[i+1] == '1') &&
			s[i+2] >= '0' && s[i+2] <= '7' && s[i+3] >= '0' && s[i+3] <= '7' {
			b = append(b, (s[i+1]-'0')<<6|(s[i+2]-'0')<<3|(s[i+3]-'0'))
			i += 3
			continue
		}
		b = append(b, s[i])
	}
	return string(b)
}

func fromInfo(in *info) (Mount, error) {
	if in.ID < 0 || in.Parent < 0 || in.ID > 1<<32-1 || in.Parent > 1<<32-1 {
		return Mount{}, fmt.Errorf("mount id out of range")
	}
	m := Mount{
		ID: uint32(in.ID), ParentID: uint32(in.Parent),
		Mountpoint: in.Mountpoint, Root: in.Root,
		FSType: in.FSType, Source: in.Source, Options: superOptions(in.VFSOptions),
		Flags: ParseFlags(in.Options),
		Dev:   uint32(in.Major)<<20 | uint32(in.Minor)&(1<<20-1),
	}
	for o, rest, more := "", in.Options, true; more; {
		if o, rest, more = strings.Cut(rest, ","); o == "idmapped" {
			m.IDMap = &images.IDMaps{} // its maps: fillIDMaps
		}
	}
	if strings.HasSuffix(m.Root, deletedSuffix) {
		m.Root, m.Deleted = strings.TrimSuffix(m.Root, deletedSuffix), true
		if m.Root == "" {
			m.Root = "/"
		}
	}
	for field, rest, more := "", in.Optional, in.Optional != ""; more; {
		if field, rest, more = strings.Cut(rest, " "); field == "" {
			continue
		}
		tag, value, _ := strings.Cut(field, ":")
		var dst *uint32
		switch tag {
		case "shared":
			dst = &m.PeerGroup
		case "master":
			dst = &m.Master
		case "propagate_from":
			dst = &m.PropagateFrom
		case "unbindable":
			m.Unbindable = true
			continue
		default:
			continue // a tag newer than this code; ignore it as the kernel allows
		}
		n, err := strconv.ParseUint(value, 10, 32)
		if err != nil || n == 0 {
			return Mount{}, fmt.Errorf("bad optional field %q", field)
		}
		*dst = uint32(n)
	}
	return m, nil
}

// superOptions drops the leading rw/ro from mountinfo's superblock options,
// as CRIU does when it dumps them.
func superOptions(s string) string {
	for _, p := range []string{"rw,", "ro,"} {
		if strings.HasPrefix(s, p) {
			return s[len(p):]
		}
	}
	if s == "rw" || s == "ro" {
		return ""
	}
	return s
}

package forest

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// JSONSchema names the version of the JSON written by WriteJSON. Fields are
// only ever added under the same name; a change of meaning gets a new name.
const JSONSchema = "mntv2.forest/v1"

// The JSON document written by WriteJSON (documented in docs/json-schema.md).
type jsonForest struct {
	Schema     string          `json:"schema"`
	Namespaces []jsonNamespace `json:"namespaces"`
	Groups     []jsonGroup     `json:"groups"`
}

type jsonNamespace struct {
	ID     uint32      `json:"id"`
	Root   uint32      `json:"root"`
	Mounts []jsonMount `json:"mounts"` // parents before children
}

type jsonMount struct {
	ID         uint32 `json:"id"`
	Parent     uint32 `json:"parent"`
	Mountpoint string `json:"mountpoint"`
	StackLevel int    `json:"stack_level"`
	Root       string `json:"root"`
	FSType     string `json:"fstype"`
	Source     string `json:"source"`
	Options    string `json:"options"`
	Flags      string `json:"flags"`
	Dev        string `json:"dev"`
	Shared     uint32 `json:"shared,omitempty"`
	Master     uint32 `json:"master,omitempty"`
	Unbindable bool   `json:"unbindable,omitempty"`
	External   string `json:"external,omitempty"`
	Deleted    bool   `json:"deleted,omitempty"`
}

type jsonRef struct {
	NS    uint32 `json:"ns"`
	Mount uint32 `json:"mount"`
}

type jsonGroup struct {
	ID      uint32    `json:"id"`
	Master  uint32    `json:"master,omitempty"`
	Members []jsonRef `json:"members"`
	Slaves  []jsonRef `json:"slaves"`
}

// DevString formats a kdev_t as major:minor.
func DevString(dev uint32) string { return fmt.Sprintf("%d:%d", dev>>20, dev&(1<<20-1)) }

func refs(ms []*Mount) []jsonRef {
	out := make([]jsonRef, 0, len(ms))
	for _, m := range ms {
		out = append(out, jsonRef{NS: m.NS.ID, Mount: m.ID})
	}
	return out
}

// WriteJSON writes the forest as a JSONSchema document.
func WriteJSON(w io.Writer, f *Forest) error {
	doc := jsonForest{Schema: JSONSchema, Namespaces: []jsonNamespace{}, Groups: []jsonGroup{}}
	for _, ns := range f.Namespaces {
		jn := jsonNamespace{ID: ns.ID, Root: ns.Root.ID, Mounts: make([]jsonMount, 0, len(ns.Mounts))}
		_ = ns.Walk(func(m *Mount) error {
			jn.Mounts = append(jn.Mounts, jsonMount{
				ID: m.ID, Parent: m.ParentID, Mountpoint: m.Mountpoint, StackLevel: m.StackLevel(),
				Root: m.Root, FSType: m.FSType, Source: m.Source, Options: m.Options,
				Flags: m.Flags.String(), Dev: DevString(m.Dev), Shared: m.PeerGroup, Master: m.Master,
				Unbindable: m.Unbindable, External: m.External, Deleted: m.Deleted,
			})
			return nil
		})
		doc.Namespaces = append(doc.Namespaces, jn)
	}
	for _, g := range f.Groups() {
		doc.Groups = append(doc.Groups, jsonGroup{ID: g.ID, Master: g.Master, Members: refs(g.Members), Slaves: refs(g.Slaves)})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

// Propagation gives mountinfo's optional fields: "shared:1 master:2 unbindable".
func (m *Mount) Propagation() string {
	var p []string
	if m.PeerGroup != 0 {
		p = append(p, fmt.Sprintf("shared:%d", m.PeerGroup))
	}
	if m.Master != 0 {
		p = append(p, fmt.Sprintf("master:%d", m.Master))
	}
	if m.Unbindable {
		p = append(p, "unbindable")
	}
	if len(p) == 0 {
		return "private"
	}
	return strings.Join(p, " ")
}

// TextLine is a mount in one line: "/tmp/p tmpfs storm root=/ rw,relatime shared:1".
func (m *Mount) TextLine() string {
	fs := m.FSType
	if fs == "" && m.External == "" {
		fs = "(unsupported)" // CRIU's UNSUPPORTED: the images do not name it
	}
	if m.External != "" {
		fs = "external(" + m.External + ")"
		if m.FSType != "" {
			fs = m.FSType + " " + fs
		}
	}
	s := fmt.Sprintf("%s  %s %s root=%s %s %s", m.Mountpoint, fs, m.Source, m.Root, m.Flags, m.Propagation())
	if m.Deleted {
		s += " deleted"
	}
	if im := m.IDMapString(); im != "" {
		s += " " + im
	}
	return s
}

// WriteText writes each namespace as a tree, then the sharing groups.
func WriteText(w io.Writer, f *Forest) error {
	var b strings.Builder
	for _, ns := range f.Namespaces {
		fmt.Fprintf(&b, "mount namespace %d: %d mounts", ns.ID, len(ns.Mounts))
		if o := ns.OwnerString(); o != "" {
			b.WriteString(" owner=" + o)
		}
		b.WriteString("\n")
		depth := map[*Mount]int{}
		_ = ns.Walk(func(m *Mount) error {
			d := 0
			if m.Parent != nil {
				d = depth[m.Parent] + 1
			}
			depth[m] = d
			fmt.Fprintf(&b, "%s%d %s\n", strings.Repeat("  ", d), m.ID, m.TextLine())
			return nil
		})
		b.WriteString("\n")
	}
	groups := f.Groups()
	fmt.Fprintf(&b, "sharing groups: %d\n", len(groups))
	for _, g := range groups {
		fmt.Fprintf(&b, "  group %d", g.ID)
		if g.Master != 0 {
			fmt.Fprintf(&b, " (slave of %d)", g.Master)
		}
		if len(g.Members) == 0 {
			b.WriteString(" (no member here: external master)")
		}
		b.WriteString(":")
		for _, m := range g.Members {
			fmt.Fprintf(&b, " %d:%s", m.NS.ID, m.Describe())
		}
		if len(g.Slaves) > 0 {
			b.WriteString("; slaves:")
			for _, m := range g.Slaves {
				fmt.Fprintf(&b, " %d:%s", m.NS.ID, m.Describe())
			}
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteDot writes a Graphviz digraph: mounts as nodes with tree edges, each
// peer group as a cluster, and dashed master -> slave edges.
func WriteDot(w io.Writer, f *Forest) error {
	var b strings.Builder
	b.WriteString("digraph mounts {\n  compound=true;\n  rankdir=LR;\n  node [shape=box, fontsize=10];\n")
	node := func(m *Mount) string { return fmt.Sprintf("m%d_%d", m.NS.ID, m.ID) }
	label := func(m *Mount) string {
		return dotQuote(fmt.Sprintf("ns %d #%d %s\n%s %s %s", m.NS.ID, m.ID, m.Describe(), m.FSType, m.Root, m.Propagation()))
	}
	grouped := map[*Mount]bool{}
	groups := f.Groups()
	for _, g := range groups {
		if len(g.Members) == 0 {
			fmt.Fprintf(&b, "  g%d [shape=ellipse, style=dashed, label=%s];\n", g.ID, dotQuote(fmt.Sprintf("peer group %d (outside)", g.ID)))
			continue
		}
		fmt.Fprintf(&b, "  subgraph cluster_g%d {\n    label=%s;\n    style=rounded;\n", g.ID, dotQuote(fmt.Sprintf("peer group %d", g.ID)))
		for _, m := range g.Members {
			fmt.Fprintf(&b, "    %s [label=%s];\n", node(m), label(m))
			grouped[m] = true
		}
		b.WriteString("  }\n")
	}
	for _, ns := range f.Namespaces {
		_ = ns.Walk(func(m *Mount) error {
			if !grouped[m] {
				fmt.Fprintf(&b, "  %s [label=%s];\n", node(m), label(m))
			}
			if m.Parent != nil {
				fmt.Fprintf(&b, "  %s -> %s;\n", node(m.Parent), node(m))
			}
			return nil
		})
	}
	for _, g := range groups {
		for _, s := range g.Slaves {
			if len(g.Members) == 0 {
				fmt.Fprintf(&b, "  g%d -> %s [style=dashed, color=blue];\n", g.ID, node(s))
				continue
			}
			fmt.Fprintf(&b, "  %s -> %s [style=dashed, color=blue, ltail=cluster_g%d];\n", node(g.Members[0]), node(s), g.ID)
		}
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func dotQuote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}

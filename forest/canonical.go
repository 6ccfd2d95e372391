package forest

// Canonical returns a copy of f with every number that verify ignores
// renamed by order of appearance in a walk of the trees (namespaces in
// order, parents before children, children by mountpoint): mount ids from 1,
// peer groups and masters from 1, devices from 1. Two forests that Compare
// calls identical have the same canonical text (WriteText), which lets a
// person read them side by side. Namespace ids are kept.
func (f *Forest) Canonical() *Forest {
	ids := map[*Mount]uint32{}
	groups := map[uint32]uint32{}
	devs := map[uint32]uint32{}
	rename := func(m map[uint32]uint32, v uint32) uint32 {
		if v == 0 {
			return 0
		}
		if n, ok := m[v]; ok {
			return n
		}
		m[v] = uint32(len(m) + 1)
		return m[v]
	}
	var input []NamespaceMounts
	for _, ns := range f.Namespaces {
		in := NamespaceMounts{ID: ns.ID, Owner: ns.Owner, OwnerKnown: ns.OwnerKnown}
		_ = ns.Walk(func(m *Mount) error {
			ids[m] = uint32(len(ids) + 1)
			c := *m
			c.ID = ids[m]
			c.ParentID = c.ID // a root is its own parent for Build
			if m.Parent != nil {
				c.ParentID = ids[m.Parent]
			}
			c.PeerGroup = rename(groups, m.PeerGroup)
			c.Master = rename(groups, m.Master)
			c.PropagateFrom = 0
			c.Dev = rename(devs, m.Dev)
			c.Parent, c.Children, c.NS = nil, nil, nil
			in.Mounts = append(in.Mounts, c)
			return nil
		})
		input = append(input, in)
	}
	out, err := Build(input)
	if err != nil {
		// Renaming cannot make a valid forest invalid.
		panic("forest: canonical copy does not build: " + err.Error())
	}
	out.Lossy = f.Lossy
	return out
}

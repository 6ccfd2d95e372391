package restore

import (
	"github.com/mntv2/mntv2/images"
	"strconv"
	"strings"
)

// tmpfsSizeLimit reads the size= option of a tmpfs ("16384k", "1g"); 0
// when absent or relative (size=50%).
func tmpfsSizeLimit(options string) int64 {
	for _, o := range strings.Split(options, ",") {
		v, ok := strings.CutPrefix(o, "size=")
		if !ok || v == "" {
			continue
		}
		mult := int64(1)
		switch v[len(v)-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		case '%':
			return 0
		}
		if mult != 1 {
			v = v[:len(v)-1]
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 || n > (1<<62)/mult {
			return 0
		}
		return n * mult
	}
	return 0
}

// overflowID is the id a user namespace shows for one it does not map
// (/proc/sys/kernel/overflowuid's default).
const overflowID = 65534

// mapID is the id of this user namespace that id of a user namespace with
// extents es is (First+k there is Lower+k here); one it does not map is
// the overflow id, as the kernel shows it.
func mapID(es []images.IDExtent, id int) int {
	for _, e := range es {
		if id >= int(e.First) && id-int(e.First) < int(e.Count) {
			return int(e.Lower) + id - int(e.First)
		}
	}
	return overflowID
}

// unmapID is the id on the filesystem that an idmapped mount with extents
// es shows as id (the mount shows First+k as Lower+k); an id the mount
// shows for none stays as it is.
func unmapID(es []images.IDExtent, id int) int {
	for _, e := range es {
		if id >= int(e.Lower) && id-int(e.Lower) < int(e.Count) {
			return int(e.First) + id - int(e.Lower)
		}
	}
	return id
}

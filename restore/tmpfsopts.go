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

// unmapID is the id on the filesystem that an idmapped mount with extents
// es shows as id (the mount shows First+k as Lower+k); an id the mount
// shows for none stays as it is.
func unmapID(es []images.IDExtent, id int) int {
	v, _ := images.FromParent(es, id)
	return v
}

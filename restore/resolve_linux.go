package restore

import "github.com/mntv2/mntv2/internal/beneath"

// created is an entry mntv2 made on a filesystem that outlives the
// restore (beneath.Mountpoint reports each), removed on rollback.
type created = beneath.Created

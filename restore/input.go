package restore

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
)

// ParseExtMountMap reads --ext-mount-map values: "auto" or KEY:PATH, as CRIU
// takes them.
func ParseExtMountMap(values []string) (m map[string]string, auto bool, err error) {
	m = map[string]string{}
	for _, v := range values {
		if v == "auto" {
			auto = true
			continue
		}
		key, hostPath, ok := strings.Cut(v, ":")
		if !ok || key == "" || !strings.HasPrefix(hostPath, "/") {
			return nil, false, fmt.Errorf("--ext-mount-map %q: want auto or KEY:/host/path", v)
		}
		m[key] = hostPath
	}
	return m, auto, nil
}

// LoadInput reads the forest of an images directory and which superblocks
// have tmpfs content.
func LoadInput(d *images.Dir) (Input, error) {
	f, err := forest.FromImages(d)
	if err != nil {
		return Input{}, err
	}
	names, err := d.Names()
	if err != nil {
		return Input{}, err
	}
	in := Input{Forest: f, TmpfsContent: map[uint32]bool{}}
	if in.RootNS, _, err = d.RootMountNamespace(); err != nil {
		return Input{}, err
	}
	for _, n := range names {
		s, ok := strings.CutPrefix(n, "tmpfs-dev-")
		if !ok {
			continue
		}
		s, ok = strings.CutSuffix(s, ".tar.gz.img")
		if !ok {
			continue
		}
		if dev, err := strconv.ParseUint(s, 10, 32); err == nil {
			in.TmpfsContent[uint32(dev)] = true
		}
	}
	return in, nil
}

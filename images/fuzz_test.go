package images

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/mntv2/mntv2/internal/fuzzseed"
)

// FuzzParse: any bytes give an image or a FormatError, never a panic or an
// allocation beyond the caps; a parsed image encodes back to the same bytes.
func FuzzParse(f *testing.F) {
	fuzzseed.Files(f, filepath.Join(fixtures, "*", "images", "mountpoints-*.img"))
	f.Add([]byte{})
	lim := Limits{MaxRecord: 1 << 16, MaxFile: 1 << 20}
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := Decode(bytes.NewReader(data), "mountpoints-1.img", Mountpoints, lim)
		if err != nil {
			if _, ok := err.(*FormatError); !ok {
				t.Fatalf("error %T is not a *FormatError: %v", err, err)
			}
			return
		}
		if !bytes.Equal(img.Bytes(), data) {
			t.Fatal("parsed image does not encode back to its bytes")
		}
		ms, err := img.Mounts()
		if err != nil {
			return
		}
		if _, _, err := img.StripSharing(); err != nil {
			t.Fatalf("StripSharing failed on a decodable image: %v", err)
		}
		if _, err := EncodeMounts(1, ms); err != nil {
			t.Fatal(err)
		}
	})
}

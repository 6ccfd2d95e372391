// Package fuzzseed seeds fuzz targets from the fixtures.
package fuzzseed

import (
	"os"
	"path/filepath"
	"testing"
)

// Files adds the bytes of every file matching pattern (a filepath.Glob
// pattern) to f's seed corpus.
func Files(f *testing.F, pattern string) {
	f.Helper()
	files, _ := filepath.Glob(pattern)
	if len(files) == 0 {
		f.Fatalf("no seed files match %s", pattern)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

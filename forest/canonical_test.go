package forest

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func canonicalText(t *testing.T, f *Forest) string {
	t.Helper()
	var b strings.Builder
	if err := WriteText(&b, f.Canonical()); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestCanonical: renaming every number verify ignores does not change the
// canonical text, the canonical copy compares identical to the original, and
// it is a fixed point.
func TestCanonical(t *testing.T) {
	const fixture = "07-propagation-storm"
	text := readMountinfo(t, fixture, 10)
	orig, err := mountinfoForest(t, text, 10)
	if err != nil {
		t.Fatal(err)
	}
	// Shift mount ids, device minors and peer groups.
	head := regexp.MustCompile(`^(\d+) (\d+) (\d+):(\d+)`)
	tag := regexp.MustCompile(`(shared|master):(\d+)`)
	shift := func(s string, by int) string {
		n, _ := strconv.Atoi(s)
		return strconv.Itoa(n + by)
	}
	lines := strings.Split(strings.TrimSpace(text), "\n")
	for i, l := range lines {
		l = head.ReplaceAllStringFunc(l, func(m string) string {
			g := head.FindStringSubmatch(m)
			return shift(g[1], 1000) + " " + shift(g[2], 1000) + " " + g[3] + ":" + shift(g[4], 7)
		})
		lines[i] = tag.ReplaceAllStringFunc(l, func(m string) string {
			g := tag.FindStringSubmatch(m)
			return g[1] + ":" + shift(g[2], 40)
		})
	}
	renamed := strings.Join(lines, "\n") + "\n"
	other, err := mountinfoForest(t, renamed, 10)
	if err != nil {
		t.Fatal(err)
	}
	if renamed == text {
		t.Fatal("renaming changed nothing")
	}
	a, b := canonicalText(t, orig), canonicalText(t, other)
	if a != b {
		t.Errorf("canonical texts differ:\n%s\n---\n%s", a, b)
	}
	if d := Compare(orig, orig.Canonical()); len(d) != 0 {
		t.Errorf("canonical copy differs from the original: %v", d)
	}
	if c := canonicalText(t, orig.Canonical()); c != a {
		t.Errorf("canonical is not a fixed point:\n%s\n---\n%s", a, c)
	}
	if !strings.Contains(a, "\n1 / ") || !strings.Contains(a, "shared:1") {
		t.Errorf("numbers not renamed from 1:\n%s", a)
	}
}

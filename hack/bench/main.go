// Command bench measures mntv2 on synthetic forests (internal/gen) against
// the syscall floor: a minimal loop doing the same number and kind of mount
// syscalls without planning. It runs as root; every case runs in a child
// process in a new private mount namespace. make bench runs it.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"github.com/mntv2/mntv2/internal/shortlived"
	"math"
	"os"
	"os/exec"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
)

// Row is one measured case.
type Row struct {
	Mode    string  `json:"mode"` // plan, restore, hook
	Shape   string  `json:"shape"`
	N       int     `json:"n"` // mounts asked for
	Mounts  int     `json:"mounts"`
	LoadS   float64 `json:"load_s,omitempty"`
	PlanS   float64 `json:"plan_s"`
	PeakMB  float64 `json:"peak_rss_mb,omitempty"`
	Steps   int     `json:"steps,omitempty"`
	Helpers int     `json:"helpers,omitempty"`

	RestoreS float64            `json:"restore_s,omitempty"` // Apply, best of runs
	Phases   map[string]float64 `json:"phases_s,omitempty"`
	FloorS   float64            `json:"floor_s,omitempty"` // best of runs
	Ratio    float64            `json:"ratio,omitempty"`   // restore (or hook) / floor
	Syscalls int                `json:"syscalls,omitempty"`
	VerifyS  float64            `json:"verify_s,omitempty"`
	ReleaseS float64            `json:"release_s,omitempty"`
	HookS    float64            `json:"hook_s,omitempty"` // post-restore's ApplyLive, verify excluded
	Error    string             `json:"error,omitempty"`
}

const childEnv = "MNTV2_BENCH_CHILD"

func main() {
	if v := os.Getenv(childEnv); v != "" {
		os.Exit(child(v))
	}
	shapes := flag.String("shapes", "peers,groups,chains,nested,stacked,multins,mix", "shapes")
	restoreSizes := flag.String("restore", "1000,10000", "sizes restored (peers also at 2000 and 5000 for the plot)")
	planSizes := flag.String("plan", "1000,10000,50000", "sizes planned")
	hookSize := flag.Int("hook", 10000, "size of the post-restore (hook) case, peers shape")
	out := flag.String("out", "bench.json", "JSON output")
	svg := flag.String("svg", "bench.svg", "SVG plot output")
	criuJSON := flag.String("criu", "", "results of hack/bench-criu.sh to include")
	noopExe := flag.String("noop", "", "mntv2 binary whose no-op hook action (network-lock) is timed against /bin/true")
	noopRuns := flag.Int("noop-runs", 200, "runs of the no-op action (and of /bin/true)")
	postImages := flag.String("post-floor", "", "images directory: print post-restore's best run of the report files given as arguments against the floor of its syscalls, as JSON (hack/bench-criu.sh)")
	flag.Parse()
	if *postImages != "" {
		shortlived.Tune()
		row, err := postFloor(*postImages, flag.Args())
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: post-floor:", err)
			os.Exit(1)
		}
		b, _ := json.Marshal(row)
		fmt.Printf("%s\n", b)
		return
	}

	var rows []Row
	run := func(mode, shape string, n int) {
		r := runChild(mode, shape, n)
		rows = append(rows, r)
		if r.Error != "" {
			fmt.Fprintf(os.Stderr, "bench: %s %s %d: %s\n", mode, shape, n, r.Error)
		} else {
			fmt.Fprintf(os.Stderr, "bench: %s %s %d done\n", mode, shape, n)
		}
	}
	for _, shape := range strings.Split(*shapes, ",") {
		if shape == "" {
			continue
		}
		for _, n := range ints(*planSizes) {
			run("plan", shape, n)
		}
		sizes := ints(*restoreSizes)
		if shape == "peers" {
			sizes = append(sizes, 2000, 5000)
			sort.Ints(sizes)
		}
		for _, n := range sizes {
			run("restore", shape, n)
		}
	}
	if *hookSize > 0 {
		run("hook", "peers", *hookSize)
		run("hook", "mix", *hookSize)
	}
	var criu *CriuFile
	if *criuJSON != "" {
		b, err := os.ReadFile(*criuJSON)
		if err == nil {
			criu = &CriuFile{}
			err = json.Unmarshal(b, criu)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: -criu:", err)
			os.Exit(1)
		}
		criu.shares()
	}
	var nr *NoopRow
	if *noopExe != "" {
		var err error
		if nr, err = noop(*noopExe, *noopRuns); err != nil {
			fmt.Fprintln(os.Stderr, "bench: no-op action:", err)
			os.Exit(1)
		}
	}
	report(os.Stdout, rows, criu, nr)
	b, _ := json.MarshalIndent(map[string]any{"rows": rows, "criu": criu, "noop": nr}, "", "  ")
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := os.WriteFile(*svg, []byte(plot(rows, criu)), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, r := range rows {
		if r.Error != "" {
			os.Exit(1)
		}
	}
}

func ints(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

// runChild runs one case in a child process with a private mount
// namespace of its own.
func runChild(mode, shape string, n int) Row {
	exe, _ := os.Executable()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s:%s:%d", childEnv, mode, shape, n))
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	var r Row
	if jerr := json.Unmarshal(out, &r); jerr != nil {
		return Row{Mode: mode, Shape: shape, N: n, Error: fmt.Sprintf("child: %v %v", err, jerr)}
	}
	return r
}

func report(w *os.File, rows []Row, criu *CriuFile, noop *NoopRow) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "\nplanning, best of 3 (load = read the images; peak = the process's peak RSS)")
	fmt.Fprintln(tw, "shape\tN\tmounts\tload ms\tplan ms\tpeak MB\tsteps\t")
	exps := map[string][][2]float64{}
	for _, r := range rows {
		if r.Mode == "plan" && r.Error == "" {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.1f\t%.0f\t%d\t\n", r.Shape, r.N, r.Mounts, r.LoadS*1e3, r.PlanS*1e3, r.PeakMB, r.Steps)
			exps[r.Shape] = append(exps[r.Shape], [2]float64{float64(r.Mounts), r.PlanS})
		}
	}
	tw.Flush()
	fmt.Fprint(w, "planning time exponent (slope of log time over log N):")
	for _, shape := range sortedKeys(exps) {
		fmt.Fprintf(w, " %s %.2f", shape, slope(exps[shape]))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "\nrestore (best of 3) against the syscall floor (best of 3); phases of the best run")
	fmt.Fprintln(tw, "shape\tN\tmounts\trestore ms\tfloor ms\tratio\tcreate\tassemble\tsharing\tflags\tfinish\tsyscalls\tverify ms\trelease ms\t")
	for _, r := range rows {
		if r.Mode == "restore" && r.Error == "" {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.1f\t%.2f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%d\t%.1f\t%.1f\t\n", r.Shape, r.N, r.Mounts,
				r.RestoreS*1e3, r.FloorS*1e3, r.Ratio, r.Phases["create"]*1e3, r.Phases["assemble"]*1e3,
				r.Phases["sharing"]*1e3, r.Phases["flags"]*1e3, r.Phases["finish"]*1e3, r.Syscalls, r.VerifyS*1e3, r.ReleaseS*1e3)
		}
	}
	tw.Flush()
	fmt.Fprintln(w, "\npost-restore (the CRIU hook) on a private restored tree (best of 5), against the floor of its own syscalls")
	fmt.Fprintln(tw, "shape\tN\tmounts\thook ms\tfloor ms\tratio\tsyscalls\tverify ms\t")
	for _, r := range rows {
		if r.Mode == "hook" && r.Error == "" {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.1f\t%.2f\t%d\t%.1f\t\n", r.Shape, r.N, r.Mounts, r.HookS*1e3, r.FloorS*1e3, r.Ratio, r.Syscalls, r.VerifyS*1e3)
		}
	}
	tw.Flush()
	if noop != nil {
		fmt.Fprintf(w, "\nthe hook's no-op action (%s), %d runs alternated with /bin/true, fork to reaping: median %.2f ms (min %.2f, max %.2f); /bin/true %.2f ms\n",
			noop.Action, noop.Runs, noop.MedianS*1e3, noop.MinS*1e3, noop.MaxS*1e3, noop.TrueS*1e3)
	}
	if criu != nil {
		reportCriu(w, criu, noop)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

// slope fits log(t) = a + b log(n) by least squares and returns b.
func slope(pts [][2]float64) float64 {
	var sx, sy, sxx, sxy float64
	for _, p := range pts {
		x, y := math.Log(p[0]), math.Log(p[1])
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	n := float64(len(pts))
	if n < 2 || n*sxx-sx*sx == 0 {
		return math.NaN()
	}
	return (n*sxy - sx*sy) / (n*sxx - sx*sx)
}

// plot draws restore time against N, log-log: mntv2 and the floor for the
// peers shape, and where CRIU was measured, the mounts' share of a whole
// criu restore of N peer binds (under /tmp solid, on the root dashed) the
// three ways; beside it, the whole criu restore of each container.
func plot(rows []Row, criu *CriuFile) string {
	type series struct {
		name, color, dash string
		pts               [][2]float64
	}
	var mnt, flo series
	mnt = series{name: "mntv2 restore (synthetic peers)", color: "#2ca02c"}
	flo = series{name: "syscall floor (synthetic peers)", color: "#7f7f7f", dash: "4,3"}
	for _, r := range rows {
		if r.Mode == "restore" && r.Shape == "peers" && r.Error == "" {
			mnt.pts = append(mnt.pts, [2]float64{float64(r.Mounts), r.RestoreS})
			flo.pts = append(flo.pts, [2]float64{float64(r.Mounts), r.FloorS})
		}
	}
	all := []series{mnt, flo}
	const W, H, L, B, T, R = 640.0, 460.0, 70.0, 50.0, 30.0, 20.0
	width := W
	if criu != nil {
		width = 2 * W
		for _, shape := range []string{"tmp", "root"} {
			dash := ""
			if shape == "root" {
				dash = "6,4"
			}
			c := series{name: "CRIU alone, binds on " + shape, color: "#d62728", dash: dash}
			red := series{name: "CRIU + mntv2 (reduce), " + shape, color: "#1f77b4", dash: dash}
			str := series{name: "CRIU + mntv2 (strip), " + shape, color: "#ff7f0e", dash: dash}
			for _, r := range criu.Rows {
				if r.Shape == shape && r.Share != nil {
					c.pts = append(c.pts, [2]float64{float64(r.N), r.Share.CriuS})
					red.pts = append(red.pts, [2]float64{float64(r.N), r.Share.ReduceS})
					str.pts = append(str.pts, [2]float64{float64(r.N), r.Share.StripS})
				}
			}
			if len(c.pts) > 0 {
				all = append(all, c, red, str)
			}
		}
	}
	x0, x1, y0, y1 := math.Log10(500), math.Log10(20000), math.Log10(1e-3), math.Log10(100)
	px := func(n float64) float64 { return L + (math.Log10(n)-x0)/(x1-x0)*(W-L-R) }
	py := func(s float64) float64 { return H - B - (math.Log10(math.Max(s, 1e-4))-y0)/(y1-y0)*(H-B-T) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", width, H)
	title := "restore time against mounts (log-log)"
	if criu != nil {
		title = "restore time against mounts (log-log); CRIU: the mounts' share"
	}
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%.0f" y="18" font-size="14">%s</text>`+"\n", L, title)
	for _, n := range []float64{1000, 2000, 5000, 10000} {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="middle">%.0f</text>`+"\n",
			px(n), T, px(n), H-B, px(n), H-B+16, n)
	}
	for _, s := range []float64{1e-3, 1e-2, 1e-1, 1, 10, 100} {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="end">%gs</text>`+"\n",
			L, py(s), W-R, py(s), L-6, py(s)+4, s)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">mounts</text>`+"\n", (L+W-R)/2, H-10)
	for i, s := range all {
		var pts []string
		for _, p := range s.pts {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(p[0]), py(p[1])))
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", px(p[0]), py(p[1]), s.color)
		}
		dash := ""
		if s.dash != "" {
			dash = fmt.Sprintf(` stroke-dasharray="%s"`, s.dash)
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", s.color, dash, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="3"%s/><text x="%.0f" y="%.0f">%s</text>`+"\n",
			L+8, T+14+float64(i)*16, L+26, T+14+float64(i)*16, s.color, dash, L+32, T+18+float64(i)*16, s.name)
	}
	if criu != nil {
		plotCriu(&b, criu, W, W, H)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// child runs one case: "mode:shape:n".
func child(spec string) int {
	shortlived.Tune() // as mntv2 runs
	parts := strings.SplitN(spec, ":", 3)
	n, _ := strconv.Atoi(parts[2])
	r := Row{Mode: parts[0], Shape: parts[1], N: n}
	if p := os.Getenv("MNTV2_BENCH_CPUPROFILE"); p != "" {
		f, err := os.Create(p)
		if err == nil {
			_ = pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	if err := runCase(&r); err != nil {
		r.Error = err.Error()
	}
	b, _ := json.Marshal(r)
	os.Stdout.Write(b)
	return 0
}

func scratch() (string, func(), error) {
	dir, err := os.MkdirTemp("", "mntv2-bench-")
	if err != nil {
		return "", nil, err
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}

package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// CriuFile is what hack/bench-criu.sh writes.
type CriuFile struct {
	Criu        string     `json:"criu"`
	CriuVersion string     `json:"criu_version"`
	KdatCache   bool       `json:"kdat_cache"` // a tmpfs on /run: CRIU keeps its kernel probes
	Runs        int        `json:"runs"`       // best of, containers below 5000 binds
	BigRuns     int        `json:"big_runs"`   // best of, 5000 binds and more
	TotalS      float64    `json:"total_s"`    // the script's whole run
	Rows        []*CriuRow `json:"rows"`
}

// CriuRow is one container: the whole `criu restore`, best of Runs.
type CriuRow struct {
	Name    string  `json:"name"`  // base, tmp-N, root-N, mixed, open-1000
	Shape   string  `json:"shape"` // base, tmp, root, mixed, open
	N       int     `json:"n"`     // binds asked for (tmp, root, open)
	Runs    int     `json:"runs"`
	CriuS   float64 `json:"criu_s"`   // CRIU alone
	ReduceS float64 `json:"reduce_s"` // CRIU + mntv2, MNTV2_REDUCE=1 (reduce and complete)
	StripS  float64 `json:"strip_s"`  // CRIU + mntv2, MNTV2_REDUCE=0 (strip and reapply)
	Mntv2S  float64 `json:"mntv2_s"`  // mntv2 restore of the same images (mounts only, no tasks)
	// Through go-criu's RPC (criu swrk, as runc and containerd restore):
	// CRIU alone, and with mntv2's Notify (reduce).
	RPCCriuS  float64 `json:"rpc_criu_s"`
	RPCMntv2S float64 `json:"rpc_mntv2_s"`
	// mntv2 verify of the first run of each way against the images.
	Verify   map[string]string `json:"verify"`
	BuildS   float64           `json:"build_s"`
	DumpS    float64           `json:"dump_s"`
	RestoreS float64           `json:"restores_s"` // all runs
	Reduce   *PostRow          `json:"post_reduce"`
	Strip    *PostRow          `json:"post_strip"`
	// How long CRIU waited for the hook's actions, from one more run of
	// each mode with CRIU's log at -v4.
	ActionsReduce *HookActions `json:"actions_reduce"`
	ActionsStrip  *HookActions `json:"actions_strip"`
	// The mounts' share: each time minus the base container's (hack/bench
	// fills it in).
	Share *CriuShare `json:"share,omitempty"`
}

// HookActions are the times CRIU waited for the hook's two working
// actions (each a whole process: start, settings, work, exit).
type HookActions struct {
	PreRestoreS  float64 `json:"pre_restore_s"`
	PostRestoreS float64 `json:"post_restore_s"`
	// PostRestoreWorkS is post-restore's own time (plugin.PostRestore,
	// as it logs it), in the same run.
	PostRestoreWorkS float64 `json:"post_restore_work_s"`
}

// CriuShare is a row minus the base container, way by way.
type CriuShare struct {
	CriuS     float64 `json:"criu_s"`
	ReduceS   float64 `json:"reduce_s"`
	StripS    float64 `json:"strip_s"`
	Mntv2S    float64 `json:"mntv2_s"`
	RPCCriuS  float64 `json:"rpc_criu_s"`
	RPCMntv2S float64 `json:"rpc_mntv2_s"`
}

// Mounts is the mounts of the container's images, every namespace.
func (r *CriuRow) Mounts() int {
	if r.Reduce != nil {
		return r.Reduce.Mounts
	}
	return 0
}

// shares fills in each row's share.
func (cf *CriuFile) shares() {
	var base *CriuRow
	for _, r := range cf.Rows {
		if r.Shape == "base" {
			base = r
		}
	}
	if base == nil {
		return
	}
	for _, r := range cf.Rows {
		if r != base {
			r.Share = &CriuShare{CriuS: r.CriuS - base.CriuS, ReduceS: r.ReduceS - base.ReduceS,
				StripS: r.StripS - base.StripS, Mntv2S: r.Mntv2S - base.Mntv2S,
				RPCCriuS: r.RPCCriuS - base.RPCCriuS, RPCMntv2S: r.RPCMntv2S - base.RPCMntv2S}
		}
	}
}

func (cf *CriuFile) row(name string) *CriuRow {
	for _, r := range cf.Rows {
		if r.Name == name {
			return r
		}
	}
	return nil
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return math.Inf(1)
	}
	return a / b
}

func ms(s float64) string { return fmt.Sprintf("%.1f", s*1e3) }

func reportCriu(w io.Writer, cf *CriuFile, noop *NoopRow) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	kdat := "CRIU's kernel probes cached (a tmpfs /run, as on systemd hosts)"
	if !cf.KdatCache {
		kdat = "no kdat cache: CRIU probes the kernel at every run"
	}
	fmt.Fprintf(w, "\nCRIU %s, whole `criu restore -d` of each container, ms (best of %d; 5000 binds and more: best of %d); %s;\n"+
		"command line (CRIU alone, + mntv2 as its action script) and go-criu RPC (criu swrk, as runc and containerd: CRIU alone, + mntv2's Notify); verify: mntv2 verify of the first run\n",
		cf.CriuVersion, cf.Runs, cf.BigRuns, kdat)
	fmt.Fprintln(tw, "container\tmounts\truns\tCRIU\t+mntv2 reduce\t+mntv2 strip\tCRIU/reduce\tCRIU/strip\tRPC: CRIU\t+mntv2\tCRIU/mntv2\tmntv2 restore\tverify criu,reduce,strip,rpc,rpc+mntv2\t")
	for _, r := range cf.Rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%.2fx\t%.2fx\t%s\t%s\t%.2fx\t%s\t%s,%s,%s,%s,%s\t\n", r.Name, r.Mounts(), r.Runs, ms(r.CriuS), ms(r.ReduceS), ms(r.StripS),
			ratio(r.CriuS, r.ReduceS), ratio(r.CriuS, r.StripS), ms(r.RPCCriuS), ms(r.RPCMntv2S), ratio(r.RPCCriuS, r.RPCMntv2S), ms(r.Mntv2S),
			r.Verify["criu"], r.Verify["reduce"], r.Verify["strip"], r.Verify["rpc-criu"], r.Verify["rpc-mntv2"])
	}
	tw.Flush()
	fmt.Fprintln(w, "\nthe mounts' share: each time minus the base container's (same way), ms")
	fmt.Fprintln(tw, "container\tCRIU\t+mntv2 reduce\t+mntv2 strip\tmntv2 restore\tCRIU/reduce\tCRIU/strip\tCRIU/mntv2 restore\tRPC: CRIU\t+mntv2\tCRIU/mntv2\t")
	for _, r := range cf.Rows {
		if s := r.Share; s != nil {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.1fx\t%.2fx\t%.1fx\t%s\t%s\t%.1fx\t\n", r.Name, ms(s.CriuS), ms(s.ReduceS), ms(s.StripS), ms(s.Mntv2S),
				ratio(s.CriuS, s.ReduceS), ratio(s.CriuS, s.StripS), ratio(s.CriuS, s.Mntv2S), ms(s.RPCCriuS), ms(s.RPCMntv2S), ratio(s.RPCCriuS, s.RPCMntv2S))
		}
	}
	tw.Flush()
	for _, mode := range []string{"reduce", "strip"} {
		fmt.Fprintf(w, "\npost-restore (%s), its best run (least read + apply) against the floor of the same syscalls (best of 5), ms\n", mode)
		fmt.Fprintln(tw, "container\tmounts\tcreated\tread\tplan\tapply\tfloor\tfloor beside\tapply/floor beside\t(read+apply)/floor beside\textract floor\tentries\tverify\twhole\tsyscalls\tfloor syscalls\t")
		for _, r := range cf.Rows {
			p := r.Reduce
			if mode == "strip" {
				p = r.Strip
			}
			if p == nil || p.Mode == "" {
				continue
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.2f\t%s\t%d\t%s\t%s\t%d\t%d\t\n", r.Name, p.Mounts, p.Created, ms(p.ReadS), ms(p.PlanS),
				ms(p.ApplyS), ms(p.FloorS), ms(p.FloorBesideS), ratio(p.ApplyS, p.FloorBesideS), ratio(p.ReadS+p.ApplyS, p.FloorBesideS), ms(p.FloorExtractS), p.Entries,
				ms(p.VerifyS), ms(p.TotalS), p.Syscalls, p.FloorSyscalls)
			if len(p.Unmodeled) > 0 {
				fmt.Fprintf(tw, "%s: steps the floor does not make: %v\t\n", r.Name, p.Unmodeled)
			}
		}
		tw.Flush()
	}
	fmt.Fprintln(w, "\nthe hook's actions inside criu restore (one more run each, CRIU's log at -v4: from its \"Running ACTION scripts\" to its next line), ms;")
	fmt.Fprintln(w, "its work: post-restore's own time as it logs it, same run; the rest of the action is the process (start, settings, exit)")
	fmt.Fprintln(tw, "container\treduce: pre-restore\tpost-restore\tits work\tstrip: pre-restore\tpost-restore\tits work\t")
	for _, r := range cf.Rows {
		a, b := r.ActionsReduce, r.ActionsStrip
		if a == nil || b == nil {
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Name, ms(a.PreRestoreS), ms(a.PostRestoreS), ms(a.PostRestoreWorkS),
			ms(b.PreRestoreS), ms(b.PostRestoreS), ms(b.PostRestoreWorkS))
	}
	tw.Flush()
	fmt.Fprintln(w, "\npost-restore (reduce), its best run by kind of step: steps/ms (fill-tmpfs runs beside the others)")
	for _, r := range cf.Rows {
		if p := r.Reduce; p != nil && len(p.Ops) > 0 {
			fmt.Fprintf(w, "  %s:", r.Name)
			for _, op := range sortedKeys(p.Ops) {
				fmt.Fprintf(w, " %s %d/%s", op, p.Ops[op].Steps, ms(p.Ops[op].Seconds))
			}
			fmt.Fprintln(w)
		}
	}
	fmt.Fprintf(w, "\nbench-criu.sh took %.0f s\n", cf.TotalS)
	fmt.Fprintln(w, "\ngoals (issue 13):")
	goal := func(what string, ok bool, got string) {
		v := "MISSED"
		if ok {
			v = "met"
		}
		fmt.Fprintf(w, "  %-72s %s (%s)\n", what, v, got)
	}
	// The goals, for the command line and for RPC.
	for _, wy := range []struct {
		name       string
		criu, mntv func(*CriuRow) float64
		share      func(*CriuShare) (float64, float64)
	}{
		{"command line", func(r *CriuRow) float64 { return r.CriuS }, func(r *CriuRow) float64 { return r.ReduceS },
			func(s *CriuShare) (float64, float64) { return s.CriuS, s.ReduceS }},
		{"RPC", func(r *CriuRow) float64 { return r.RPCCriuS }, func(r *CriuRow) float64 { return r.RPCMntv2S },
			func(s *CriuShare) (float64, float64) { return s.RPCCriuS, s.RPCMntv2S }},
	} {
		for _, shape := range []string{"tmp", "root"} {
			if r := cf.row(shape + "-10000"); r != nil && wy.mntv(r) > 0 {
				x := ratio(wy.criu(r), wy.mntv(r))
				goal(fmt.Sprintf("%s, %s-10000: CRIU + mntv2 >= 10x faster than CRIU alone", wy.name, shape), x >= 10, fmt.Sprintf("%.1fx", x))
			}
			if r := cf.row(shape + "-1000"); r != nil && wy.mntv(r) > 0 {
				x := ratio(wy.criu(r), wy.mntv(r))
				got := fmt.Sprintf("%.2fx", x)
				if base := cf.row("base"); base != nil {
					got += fmt.Sprintf("; the hook's cost at base %s ms, its share here %s ms; a hook of no cost gives at most %.1fx",
						ms(wy.mntv(base)-wy.criu(base)), ms(wy.mntv(r)-wy.mntv(base)), ratio(wy.criu(r), wy.criu(base)))
				}
				goal(fmt.Sprintf("%s, %s-1000: CRIU + mntv2 >= 3x faster than CRIU alone", wy.name, shape), x >= 3, got)
				if r.Share != nil {
					c, m := wy.share(r.Share)
					x := ratio(c, m)
					goal(fmt.Sprintf("%s, %s-1000: the mounts' share >= 10x smaller", wy.name, shape), x >= 10, fmt.Sprintf("%.1fx", x))
				}
			}
		}
	}
	for _, r := range cf.Rows {
		if p := r.Reduce; p != nil && p.Mode == "reduce" && p.Created > 0 && r.Shape != "base" {
			x := ratio(p.ApplyS, p.FloorBesideS)
			goal(fmt.Sprintf("%s: post-restore's completion (apply) within 1.5x of its floor", r.Name), x <= 1.5,
				fmt.Sprintf("%.2f of the floor with the extraction beside, %.2f of the sequential one; read + apply %.2f; all its steps, the early and advanced ones too, %.2f",
					x, ratio(p.ApplyS, p.FloorS), ratio(p.ReadS+p.ApplyS, p.FloorBesideS), ratio(p.EarlyS+p.AdvancedS+p.ApplyS, p.FloorBesideS)))
		}
	}
	if noop != nil {
		goal("no-op action <= 2 ms median", noop.MedianS <= 2e-3, fmt.Sprintf("%.2f ms", noop.MedianS*1e3))
	}
}

// plotCriu draws, at x offset ox, the whole criu restore of each
// container, the three ways, as bars on a log scale.
func plotCriu(b *strings.Builder, cf *CriuFile, ox, W, H float64) {
	const L, B, T, R = 60.0, 90.0, 30.0, 20.0
	y0, y1 := math.Log10(1e-2), math.Log10(100)
	py := func(s float64) float64 { return H - B - (math.Log10(math.Max(s, 1e-2))-y0)/(y1-y0)*(H-B-T) }
	fmt.Fprintf(b, `<text x="%.0f" y="18" font-size="14">whole criu restore of each container (log)</text>`+"\n", ox+L)
	for _, s := range []float64{1e-2, 1e-1, 1, 10, 100} {
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="end">%gs</text>`+"\n",
			ox+L, py(s), ox+W-R, py(s), ox+L-6, py(s)+4, s)
	}
	ways := []struct {
		name, color string
		get         func(*CriuRow) float64
	}{
		{"CRIU alone", "#d62728", func(r *CriuRow) float64 { return r.CriuS }},
		{"CRIU + mntv2 (reduce)", "#1f77b4", func(r *CriuRow) float64 { return r.ReduceS }},
		{"CRIU + mntv2 (strip)", "#ff7f0e", func(r *CriuRow) float64 { return r.StripS }},
		{"RPC: CRIU alone", "#f4a6a6", func(r *CriuRow) float64 { return r.RPCCriuS }},
		{"RPC: CRIU + mntv2 Notify", "#9ecae1", func(r *CriuRow) float64 { return r.RPCMntv2S }},
	}
	slot := (W - L - R) / float64(max(len(cf.Rows), 1))
	bw := slot * 0.8 / float64(len(ways))
	for i, r := range cf.Rows {
		x := ox + L + float64(i)*slot + slot*0.1
		for j, wy := range ways {
			v := wy.get(r)
			if v <= 0 {
				continue // not measured
			}
			fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %.1f ms</title></rect>`+"\n",
				x+float64(j)*bw, py(v), bw, H-B-py(v), wy.color, r.Name, wy.name, v*1e3)
		}
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10">%.1fx</text>`+"\n", x+bw*1.5, py(math.Max(r.CriuS, r.StripS))-4, ratio(r.CriuS, r.ReduceS))
		fmt.Fprintf(b, `<text transform="translate(%.1f,%.1f) rotate(40)" font-size="11">%s</text>`+"\n", x+bw, H-B+12, r.Name)
	}
	for j, wy := range ways {
		fmt.Fprintf(b, `<rect x="%.0f" y="%.0f" width="12" height="12" fill="%s"/><text x="%.0f" y="%.0f">%s</text>`+"\n",
			ox+L+10, T+8+float64(j)*18, wy.color, ox+L+28, T+18+float64(j)*18, wy.name)
	}
	fmt.Fprintf(b, `<text x="%.0f" y="%.0f" font-size="11">label: CRIU alone / CRIU + mntv2 (reduce), command line</text>`+"\n", ox+L+10, T+18+float64(len(ways))*18)
}

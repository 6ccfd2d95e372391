package plugin

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/proctree"
	"golang.org/x/sys/unix"
)

// Environment of the hook. CRIU sets the CRTOOLS_* ones; the MNTV2_* ones
// are mntv2's settings, read from the environment, else from ConfigFile.
const (
	EnvAction   = "CRTOOLS_SCRIPT_ACTION"
	EnvImageDir = "CRTOOLS_IMAGE_DIR"
	EnvInitPID  = "CRTOOLS_INIT_PID"

	EnvLog         = "MNTV2_LOG"          // append the log here too (the watcher's only log)
	EnvLogLevel    = "MNTV2_LOG_LEVEL"    // debug, info, warn, error (default info)
	EnvLenient     = "MNTV2_LENIENT"      // 1: a namespace that differs after post-restore only logs
	EnvDisable     = "MNTV2_DISABLE"      // 1: every action exits 0 at once
	EnvFailSyscall = "MNTV2_FAIL_SYSCALL" // N: fail the N-th mount syscall of post-restore (tests)
	EnvReport      = "MNTV2_REPORT"       // FILE: post-restore writes what it did and found there (JSON)
	EnvReduce      = "MNTV2_REDUCE"       // 0: CRIU restores every mount (strip and reapply); default 1: reduce and complete
	EnvPrepared    = "MNTV2_PREPARED"     // 0: post-dump prepares no rewrite, pre-restore uses none (see Prepare)
)

// ConfigFile holds MNTV2_* settings as KEY=VALUE lines, for CRIU runs whose
// environment mntv2 cannot set (runc, podman, CRI-O): the environment wins.
var ConfigFile = "/etc/mntv2/criu-hook.conf"

// Settings are the hook's settings, resolved.
type Settings struct {
	Config
	LogFile    string
	LogLevel   slog.Level
	Disabled   bool
	ReportFile string // MNTV2_REPORT
	NoPrepared bool   // MNTV2_PREPARED=0
	// beforeWrite, when set, runs before the rewrite's first write (the
	// Notify's watcher is armed then).
	beforeWrite func() error
	// planned, when set, receives pre-restore's rewrite once it is
	// computed, before it is written (the Notify makes the completion
	// ready meanwhile).
	planned func(pre *rewritten)
	// takePrepared has pre-restore take the rewrite prepared at dump in
	// Go (the Notify; the action script's C half swaps it in itself).
	takePrepared bool
}

// LoadSettings reads the settings from getenv, then from ConfigFile.
func LoadSettings(getenv func(string) string) (Settings, error) {
	file := map[string]string{}
	if f, err := os.Open(ConfigFile); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				f.Close()
				return Settings{}, fmt.Errorf("%s: %q is not KEY=VALUE", ConfigFile, line)
			}
			file[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
		f.Close()
	}
	get := func(k string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return file[k]
	}
	s := Settings{LogFile: get(EnvLog), LogLevel: slog.LevelInfo, ReportFile: get(EnvReport)}
	if v := get(EnvLogLevel); v != "" {
		if err := s.LogLevel.UnmarshalText([]byte(v)); err != nil {
			return s, fmt.Errorf("%s=%q: want debug, info, warn or error", EnvLogLevel, v)
		}
	}
	s.Lenient = get(EnvLenient) == "1"
	switch v := get(EnvReduce); v {
	case "", "1":
	case "0":
		s.Strip = true
	default:
		return s, fmt.Errorf("%s=%q: want 0 or 1", EnvReduce, v)
	}
	s.Disabled = get(EnvDisable) == "1"
	s.NoPrepared = get(EnvPrepared) == "0"
	if v := get(EnvFailSyscall); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return s, fmt.Errorf("%s=%q: want a number", EnvFailSyscall, v)
		}
		s.FailSyscall = n
	}
	return s, nil
}

// Logger logs to stderr (CRIU copies a script's output into its log) and,
// with MNTV2_LOG, to that file too. close ends the file.
func (s Settings) Logger(stderr io.Writer) (log *slog.Logger, close func()) {
	w := stderr
	close = func() {}
	if s.LogFile != "" {
		if f, err := os.OpenFile(s.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
			w = io.MultiWriter(stderr, f)
			close = func() { f.Close() }
		}
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: s.LogLevel})).With("mntv2", os.Getpid()), close
}

// Hook runs one invocation of mntv2 as CRIU's action script. Only
// pre-restore and post-restore do anything; a non-nil error must end the
// script with a non-zero status, which aborts the restore.
func Hook(getenv func(string) string, s Settings, log *slog.Logger) error {
	action := getenv(EnvAction)
	if s.Disabled || action != "pre-restore" && action != "post-restore" && action != "post-dump" {
		return nil
	}
	s.Log = log
	dirPath := getenv(EnvImageDir)
	if dirPath == "" {
		return fmt.Errorf("%s: %s is not set", action, EnvImageDir)
	}
	d, err := images.Open(dirPath)
	if err != nil {
		return fmt.Errorf("%s: %w", action, err)
	}
	defer d.Close()
	switch action {
	case "post-dump":
		pid, err := strconv.Atoi(getenv(EnvInitPID))
		if err != nil || pid <= 0 {
			return fmt.Errorf("post-dump: %s=%q is not a pid", EnvInitPID, getenv(EnvInitPID))
		}
		// A dump CRIU completes must complete: without the record, a
		// restore is as exact as CRIU's alone.
		if _, err := PostDump(d, pid, log); err != nil {
			log.Warn("post-dump: not recorded what CRIU's images lose (restores will lack it, as CRIU's do)", "err", err)
		}
		if s.Strip || s.NoPrepared {
			return removePrepared(d)
		}
		// A restore without it rewrites at pre-restore, as before.
		if err := Prepare(d, log); err != nil {
			log.Warn("post-dump: no rewrite prepared for pre-restore (it rewrites then)", "err", err)
			_ = removePrepared(d)
		}
		return nil
	case "pre-restore":
		return PreRestore(d, os.Getppid(), s)
	default:
		criu := os.Getppid()
		err := postRestoreAction(d, getenv, s, log, func() bool { return os.Getppid() != criu }, criu, nil)
		// The originals' names, put back unsynced.
		return errors.Join(err, d.Sync())
	}
}

// postRestoreAction is the post-restore action: gone says whether CRIU
// (pid criu) has died since it ran the action; pre, when set, is what a
// resident pre-restore kept.
func postRestoreAction(d *images.Dir, getenv func(string) string, s Settings, log *slog.Logger, gone func() bool, criu int, pre *rewritten) error {
	pid, perr := strconv.Atoi(getenv(EnvInitPID))
	// The restored tree, held while CRIU is alive (its pids cannot be
	// another's then): if CRIU dies before it resumes them, its tasks
	// wait in CRIU's restorer forever, and are ended.
	var tree *stuckTree
	if perr == nil && pid > 0 {
		tree = holdTree(pid)
		defer tree.release()
	}
	if s.ReportFile != "" {
		go warmReport()
	}
	if pause := pauseAt(getenv("MNTV2_TEST_PAUSE"), log, s.Stop); pause != nil {
		_ = pause("post-restore")
	}
	if gone() {
		// CRIU died while this ran (its watcher puts the images back):
		// the restore is over.
		return fmt.Errorf("post-restore: CRIU (pid %d) is gone: not finishing its restore%s", criu, tree.kill())
	}
	if perr != nil || pid <= 0 {
		return fmt.Errorf("post-restore: %s=%q is not a pid", EnvInitPID, getenv(EnvInitPID))
	}
	rep, err := postRestore(d, pid, s.Config, pre)
	if err != nil && gone() {
		err = fmt.Errorf("CRIU (pid %d) is gone: not finishing its restore (rolled back: %w)%s", criu, err, tree.kill())
	}
	if s.ReportFile != "" {
		writeReport(s.ReportFile, rep, err, log)
	}
	if err != nil {
		return fmt.Errorf("post-restore: %w", err)
	}
	return nil
}

// stuckTree is a restored process tree, held by a pidfd of its root
// opened while CRIU, its parent, is alive: the pid is then the tree's, and
// its children are found from it only when they are to be ended.
type stuckTree struct {
	root, fd int
}

func holdTree(root int) *stuckTree {
	fd, err := unix.PidfdOpen(root, 0)
	if err != nil {
		return nil
	}
	return &stuckTree{root: root, fd: fd}
}

// kill ends the tree's tasks (CRIU never resumed them) and says so, for
// the error: its descendants while the root, alive, still holds them, then
// the root.
func (t *stuckTree) kill() string {
	if t == nil || unix.PidfdSendSignal(t.fd, 0, nil, 0) != nil {
		return ""
	}
	pids, _ := proctree.Walk(t.root)
	n := 0
	for _, p := range pids[min(1, len(pids)):] {
		if fd, err := unix.PidfdOpen(p, 0); err == nil {
			if unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) == nil {
				n++
			}
			unix.Close(fd)
		}
	}
	if unix.PidfdSendSignal(t.fd, unix.SIGKILL, nil, 0) == nil {
		n++
	}
	return fmt.Sprintf("; its %d restored tasks, never resumed, were killed", n)
}

func (t *stuckTree) release() {
	if t != nil {
		unix.Close(t.fd)
	}
}

// PreRestore rewrites the images for the CRIU process owner and starts a
// watcher that puts the originals back if owner exits before post-restore.
func PreRestore(d *images.Dir, owner int, s Settings) error {
	// The watcher first: from the first byte rewritten on, the originals
	// come back if CRIU (or this hook) dies.
	token := NewToken()
	if err := StartWatcher(d, owner, token, s.LogFile); err != nil {
		return fmt.Errorf("pre-restore: start the watcher that keeps the images safe: %w", err)
	}
	_, err := preRestore(d, owner, token, os.Getenv, s)
	return err
}

// preRestore rewrites the images under token (a watcher already guards
// them) and returns what post-restore needs of them.
func preRestore(d *images.Dir, owner int, token string, getenv func(string) string, s Settings) (*rewritten, error) {
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	pre := &rewritten{}
	opt := RewriteOptions{Mode: ModeReduce, Fail: pauseAt(getenv("MNTV2_TEST_PAUSE"), log, s.Stop), Reason: new(string), Originals: &pre.input}
	if s.Stop != nil {
		pause := opt.Fail
		opt.Fail = func(step string) error {
			if pause != nil {
				_ = pause(step)
			}
			select {
			case <-s.Stop:
				return errStopped
			default:
				return nil
			}
		}
	}
	if s.beforeWrite != nil {
		// The images are read and the rewrite computed meanwhile.
		before := opt.Fail
		opt.Fail = func(step string) error {
			if step == "manifest" {
				if err := s.beforeWrite(); err != nil {
					return err
				}
			}
			if before != nil {
				return before(step)
			}
			return nil
		}
	}
	if s.Strip {
		opt.Mode = ModeStrip
	}
	if s.takePrepared && !s.NoPrepared {
		opt.Prepared = new(string)
	}
	if s.planned != nil {
		opt.Planned = func(man *Manifest) {
			pre.man = man
			s.planned(pre)
		}
	}
	man, err := Rewrite(d, owner, token, opt)
	if err != nil {
		return nil, fmt.Errorf("pre-restore: images %s: %w", d.Path(), err)
	}
	if pre.man == nil {
		pre.man = man // else set already (planned), and read by its completion
	}
	if *opt.Reason != "" {
		log.Info("pre-restore: CRIU restores every mount (strip and reapply): " + *opt.Reason)
	}
	if opt.Prepared != nil && *opt.Prepared != "" && man != nil {
		log.Debug("pre-restore: the rewrite prepared at dump is not taken: " + *opt.Prepared)
	}
	if man == nil {
		log.Info("pre-restore: no mount of the images has sharing, and none can be left to mntv2; nothing to rewrite")
		return pre, nil
	}
	var names []string
	for _, f := range man.Files {
		names = append(names, f.Name)
	}
	if man.Mode == ModeReduce {
		log.Info("pre-restore: images rewritten: CRIU restores the mounts it must, without sharing; mntv2 makes the rest at post-restore",
			"files", strings.Join(names, ","), "kept", len(man.Kept), "originals", backupPrefix+"*", "watching", owner,
			"prepared", opt.Prepared != nil && *opt.Prepared == "")
		return pre, nil
	}
	log.Info("pre-restore: images rewritten without sharing", "files", strings.Join(names, ","),
		"helpers", len(man.Helpers), "originals", backupPrefix+"*", "watching", owner)
	return pre, nil
}

var errWatcher = errors.New("watcher did not start")

// pauseAt is for robustness tests only: with MNTV2_TEST_PAUSE=STEP (a step
// of the rewrite: "manifest", "backup mountpoints-10.img", "rewrite
// mountpoints-10.img"; or "post-restore"), the hook stops before it, says so on stderr and
// sleeps 30 seconds, so a test can kill it there.
func pauseAt(step string, log *slog.Logger, stop <-chan struct{}) func(string) error {
	if step == "" {
		return nil
	}
	return func(s string) error {
		if s == step {
			fmt.Fprintf(os.Stderr, "mntv2: paused before %s\n", s)
			log.Warn("paused before " + s + " (MNTV2_TEST_PAUSE)")
			select {
			case <-time.After(30 * time.Second):
			case <-stop:
			}
		}
		return nil
	}
}

// errStopped ends a rewrite whose action script died.
var errStopped = errors.New("stopped: the action script CRIU ran has died")

// ReportSchema names the JSON MNTV2_REPORT receives.
const ReportSchema = "mntv2.post-restore-report/v1"

// reportDoc is the JSON MNTV2_REPORT receives.
type reportDoc struct {
	Schema string  `json:"schema"`
	Error  string  `json:"error,omitempty"`
	Report *Report `json:"report,omitempty"`
}

// warmReport has encoding/json build its encoder of the report, which it
// does on first use (up to a millisecond): post-restore calls it on
// another thread meanwhile, not after the mounts are verified.
func warmReport() { _, _ = json.Marshal(reportDoc{Report: &Report{}}) }

// writeReport writes what post-restore did and found to file (MNTV2_REPORT).
func writeReport(file string, rep *Report, err error, log *slog.Logger) {
	doc := reportDoc{Schema: ReportSchema, Report: rep}
	if err != nil {
		doc.Error = err.Error()
	}
	data, _ := json.MarshalIndent(doc, "", "  ")
	if werr := os.WriteFile(file, append(data, '\n'), 0o600); werr != nil {
		log.Warn("post-restore: cannot write the report", "file", file, "err", werr)
	}
}

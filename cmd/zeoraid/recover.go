package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
)

const recoverSummary = `Starts an online recovery of a degraded backend and waits for its outcome,
showing progress (one updating line on a terminal, a line every few
seconds otherwise). The recovery runs in the proxy: stopping the wait
(Ctrl-C, --wait-timeout) does not stop it.

Exit code: 0 recovered (the backend is optimal again); 1 the recovery
failed (the reason is printed); 2 bad command line, or the proxy refused
the recovery or could not be reached; 3 the outcome is unknown (the wait
timed out, the proxy stayed unreachable longer than --unreachable-grace,
or the recovery disappeared). With --no-wait: 0 once the recovery started.`

// Exit codes of recover beyond exitOK and exitCritical (refused,
// unreachable, bad command line).
const (
	exitRecoveryFailed = 1
	exitUnknown        = 3
)

// How often recover polls the proxy, and how often it prints a progress
// line when stdout is not a terminal. Tests shorten them.
var (
	recoverPoll  = time.Second
	recoverEvery = 5 * time.Second
)

// isTerminal reports whether w is a terminal, where progress is one line
// updated in place.
var isTerminal = func(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}

// recoveryProgress is a recovery as the HTTP API reports it.
type recoveryProgress struct {
	ID              int64     `json:"id"`
	Backend         string    `json:"backend"`
	Source          string    `json:"source"`
	Phase           string    `json:"phase"`
	TID             string    `json:"tid"`
	LagTransactions int64     `json:"lag_transactions"`
	LagLowerBound   bool      `json:"lag_transactions_lower_bound"`
	LagSeconds      float64   `json:"lag_seconds"`
	Transactions    int64     `json:"transactions_copied"`
	Bytes           int64     `json:"bytes_copied"`
	Rate            float64   `json:"bytes_per_second"`
	Started         time.Time `json:"started"`
	Error           string    `json:"error,omitempty"`
	Dropped         int64     `json:"dropped_transactions,omitempty"`
	DroppedKeptIn   string    `json:"dropped_kept_in,omitempty"`
}

// arrayStatus is GET /v1/storages/{s}, as far as recover needs it.
type arrayStatus struct {
	Storage  string `json:"storage"`
	Status   string `json:"status"`
	Backends []struct {
		Name     string            `json:"name"`
		State    string            `json:"state"`
		Reason   string            `json:"reason"`
		Recovery *recoveryProgress `json:"recovery"`
	} `json:"backends"`
}

func recoverSettings(std stdio) *settings {
	s := cliSettings("recover", recoverSummary, std)
	s.allowArgs, s.argsUsage = true, "BACKEND"
	s.boolKey("no-wait", false, "return as soon as the proxy has started the recovery")
	s.boolKey("full-verify", false, "verify the backend's whole history against an optimal one first, not only what it got since it was last known identical")
	s.durationKey("wait-timeout", 0, nonNegative, "stop waiting after this long, e.g. 30m (0: no limit); the recovery goes on")
	s.durationKey("unreachable-grace", 30*time.Second, positive, "give up waiting when the proxy cannot be reached for this long")
	return s
}

func runRecover(std stdio, args []string) int {
	s := recoverSettings(std)
	if code, done := s.start(args); done {
		return code
	}
	backend, err := backendArg(s)
	if err != nil {
		return usageFail(s, err)
	}
	path := storagePath(s) + "/backends/" + url.PathEscape(backend) + "/recover"
	if s.boolean("full-verify") {
		path += "?full_verify=1"
	}
	body, code, ok := post(s, path)
	if !ok {
		return code
	}
	var ans struct {
		Result   string            `json:"result"`
		Recovery *recoveryProgress `json:"recovery"`
	}
	if err := json.Unmarshal(body, &ans); err != nil {
		fmt.Fprintf(std.err, "zeoraid recover: the proxy's answer is not understood: %v\n", err)
		return exitUnknown
	}
	if s.boolean("no-wait") {
		if s.boolean("json") {
			std.out.Write(body)
		} else {
			fmt.Fprintln(std.out, ans.Result)
		}
		return exitOK
	}
	w := &recoverWait{s: s, backend: backend, json: s.boolean("json"), start: time.Now()}
	w.tty = !w.json && isTerminal(std.out)
	if ans.Recovery != nil {
		w.id, w.last = ans.Recovery.ID, *ans.Recovery
	} else {
		w.last = recoveryProgress{Backend: backend, Phase: "started"}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	return w.run(ctx)
}

// recoverWait follows one recovery until it ends.
type recoverWait struct {
	s       *settings
	backend string
	// id is the recovery started (0: the proxy did not say; any will do).
	id        int64
	json, tty bool
	start     time.Time
	last      recoveryProgress
	// printed: when and in which phase the last progress line was.
	printed      time.Time
	printedPhase string
	lineOpen     bool
}

func (w *recoverWait) run(ctx context.Context) int {
	std := w.s.std
	timeout := w.s.dur("wait-timeout")
	grace := w.s.dur("unreachable-grace")
	lastContact := time.Now()
	var lastErr error
	if code, done := w.observe(w.last, "", ""); done {
		return code
	}
	t := time.NewTicker(recoverPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			w.endLine()
			fmt.Fprintf(std.err, "zeoraid recover: stopped waiting; the recovery of %s goes on in the proxy (see zeoraid status)\n", w.backend)
			return exitUnknown
		case <-t.C:
		}
		if timeout > 0 && time.Since(w.start) > timeout {
			w.endLine()
			fmt.Fprintf(std.err, "zeoraid recover: %s still recovering after %v (%s); it goes on in the proxy (see zeoraid status)\n",
				w.backend, timeout, w.progressText(w.last))
			return exitUnknown
		}
		st, err := w.fetch()
		var gone *goneError
		switch {
		case errors.As(err, &gone):
			w.endLine()
			fmt.Fprintf(std.err, "zeoraid recover: %v\n", err)
			return exitUnknown
		case err != nil:
			lastErr = err
			if time.Since(lastContact) > grace {
				w.endLine()
				fmt.Fprintf(std.err, "zeoraid recover: lost contact with the proxy for more than %v while waiting for the recovery of %s (%v); it may still be running (see zeoraid status)\n",
					grace, w.backend, lastErr)
				return exitUnknown
			}
			continue
		}
		lastContact = time.Now()
		if code, done := w.check(st); done {
			return code
		}
	}
}

// goneError: the storage or the backend is not there any more.
type goneError struct{ msg string }

func (e *goneError) Error() string { return e.msg }

func (w *recoverWait) fetch() (arrayStatus, error) {
	var st arrayStatus
	body, code, err := cliRequest(w.s, "GET", storagePath(w.s))
	if err != nil {
		return st, err
	}
	if code == http.StatusNotFound {
		return st, &goneError{fmt.Sprintf("storage %s is gone from the proxy (%s) while %s was recovering; the outcome is unknown", w.s.str("storage"), apiError(body, code), w.backend)}
	}
	if code != http.StatusOK {
		return st, errors.New(apiError(body, code))
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("bad answer: %v", err)
	}
	return st, nil
}

// check looks at one status answer: done reports the end of the wait.
func (w *recoverWait) check(st arrayStatus) (code int, done bool) {
	for _, b := range st.Backends {
		if b.Name != w.backend {
			continue
		}
		r := b.Recovery
		switch {
		case r != nil && (w.id == 0 || r.ID == w.id):
			return w.observe(*r, b.State, b.Reason)
		case r != nil && r.ID > w.id:
			w.endLine()
			fmt.Fprintf(w.s.std.err, "zeoraid recover: recovery %d of %s ended and recovery %d has started (automatic recovery?); the outcome of ours is unknown (see zeoraid status)\n",
				w.id, w.backend, r.ID)
			return exitUnknown, true
		case b.State == "optimal":
			w.last.Phase = "done"
			return w.observe(w.last, b.State, b.Reason)
		}
		w.endLine()
		reason := ""
		if b.Reason != "" {
			reason = ": " + b.Reason
		}
		fmt.Fprintf(w.s.std.err, "zeoraid recover: the recovery of %s disappeared (did the proxy restart?); %s is %s%s\n", w.backend, w.backend, b.State, reason)
		return exitUnknown, true
	}
	w.endLine()
	fmt.Fprintf(w.s.std.err, "zeoraid recover: backend %s is no longer in storage %s (removed by a reload?); the outcome is unknown\n", w.backend, w.s.str("storage"))
	return exitUnknown, true
}

// observe takes in the latest progress of our recovery: it ends the wait
// when the recovery is done or failed, and shows progress otherwise.
func (w *recoverWait) observe(p recoveryProgress, state, reason string) (code int, done bool) {
	if p.Phase == "done" && p.Transactions == 0 && w.last.Transactions > 0 {
		// The final answer may be shorter than the last progress seen.
		p.Transactions, p.Bytes = w.last.Transactions, w.last.Bytes
	}
	w.last = p
	std := w.s.std
	switch p.Phase {
	case "done":
		w.endLine()
		if w.json {
			w.printJSON("done")
			return exitOK, true
		}
		fmt.Fprintf(std.out, "recovered %s%s: %d transactions, %s copied in %v; %s is optimal\n",
			w.backend, fromText(p.Source), p.Transactions, humanBytes(p.Bytes), time.Since(w.start).Round(time.Second), w.backend)
		if p.Dropped > 0 {
			fmt.Fprintf(std.out, "%s had %d transactions the array never acknowledged (every backend was lost while they were finishing); they were dropped, and the backend keeps a copy in %s\n",
				w.backend, p.Dropped, p.DroppedKeptIn)
		}
		return exitOK, true
	case "failed":
		w.endLine()
		if w.json {
			w.printJSON("failed")
		}
		msg := p.Error
		if msg == "" {
			msg = reason
		}
		if msg == "" {
			msg = "no reason given"
		}
		fmt.Fprintf(std.err, "zeoraid recover: recovery of %s failed: %s\n", w.backend, msg)
		return exitRecoveryFailed, true
	}
	if w.json {
		return 0, false
	}
	line := w.progressText(p)
	switch {
	case w.tty:
		// Cut to the terminal's width: a wrapped line cannot be rewritten.
		fmt.Fprintf(std.out, "\r\033[K%s", fitWidth(line, terminalWidth()))
		w.lineOpen = true
	case p.Phase != w.printedPhase || time.Since(w.printed) >= recoverEvery:
		fmt.Fprintln(std.out, line)
		w.printed, w.printedPhase = time.Now(), p.Phase
	}
	return 0, false
}

func (w *recoverWait) endLine() {
	if w.lineOpen {
		fmt.Fprintln(w.s.std.out)
		w.lineOpen = false
	}
}

func (w *recoverWait) printJSON(result string) {
	enc := json.NewEncoder(w.s.std.out)
	enc.SetIndent("", "  ")
	enc.Encode(map[string]any{"result": result, "recovery": w.last})
}

// progressText is one line of progress: phase, tid, copied, lag, rate.
func (w *recoverWait) progressText(p recoveryProgress) string {
	parts := []string{fmt.Sprintf("recovering %s%s: %s", w.backend, fromText(p.Source), p.Phase)}
	if p.TID != "" && strings.Trim(p.TID, "0") != "" {
		parts = append(parts, "tid "+p.TID)
	}
	if p.Transactions > 0 || p.Bytes > 0 {
		parts = append(parts, fmt.Sprintf("%d transactions / %s copied", p.Transactions, humanBytes(p.Bytes)))
	}
	if p.LagTransactions > 0 || p.LagSeconds > 0 {
		parts = append(parts, lagText(p.LagTransactions, p.LagLowerBound, p.LagSeconds))
	}
	if p.Rate > 0 {
		parts = append(parts, humanBytes(int64(p.Rate))+"/s")
	}
	if p.Dropped > 0 {
		parts = append(parts, fmt.Sprintf("dropped %d transactions the array never acknowledged (the backend keeps them in %s)", p.Dropped, p.DroppedKeptIn))
	}
	return strings.Join(parts, ", ")
}

// terminalWidth is $COLUMNS, or 80.
func terminalWidth() int {
	if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n > 10 {
		return n
	}
	return 80
}

// fitWidth cuts s to fewer than width characters.
func fitWidth(s string, width int) string {
	r := []rune(s)
	if len(r) < width {
		return s
	}
	return string(r[:width-2]) + "…"
}

func fromText(source string) string {
	if source == "" {
		return ""
	}
	return " from " + source
}

// humanBytes renders a byte count: 512 B, 1.5 KiB, 12.3 MiB.
func humanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, unit := float64(n), "B"
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		if v < 1024 {
			break
		}
		v, unit = v/1024, u
	}
	return fmt.Sprintf("%.1f %s", v, unit)
}

// lagText says how far a recovering backend is behind: "120 behind
// (3.2s)", or "at least 120 behind" when the proxy restarted since the
// target fell behind and remembers fewer transactions than it lacks.
func lagText(n int64, lowerBound bool, seconds float64) string {
	s := fmt.Sprintf("%d behind", n)
	if lowerBound {
		s = "at least " + s
	}
	if seconds > 0 {
		s += fmt.Sprintf(" (%s)", time.Duration(seconds*float64(time.Second)).Round(100*time.Millisecond))
	}
	return s
}

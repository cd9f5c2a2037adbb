package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/zeoraid/zeoraid/cluster"
	"github.com/zeoraid/zeoraid/cluster/httpapi"
	"github.com/zeoraid/zeoraid/raidcore"
)

// Nagios-style exit codes of status and verify.
const (
	exitOK       = 0
	exitWarning  = 1 // recovering
	exitCritical = 2 // degraded, failed, unreachable, different
)

// cliSettings are the keys every command that talks to a proxy has.
func cliSettings(cmd, summary string, std stdio) *settings {
	s := newSettings(cmd, std)
	s.summary = summary
	s.urlKey("url", "http://127.0.0.1:8180", "the proxy's HTTP API")
	s.tokenKey("token", "admin token for actions (also ZEORAID_<COMMAND>_TOKEN)")
	s.nameKey("storage", "1", "storage name")
	s.durationKey("timeout", 30*time.Second, positive, "timeout of one request to the proxy")
	s.boolKey("json", false, "print the proxy's JSON answer instead of text")
	return s
}

func cliRequest(s *settings, method, path string) ([]byte, int, error) {
	req, err := http.NewRequest(method, s.str("url")+path, nil)
	if err != nil {
		return nil, 0, err
	}
	if t := s.str("token"); t != "" {
		req.Header.Set("Authorization", "Bearer "+t)
	}
	client := &http.Client{Timeout: s.dur("timeout")}
	resp, err := client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return body, resp.StatusCode, err
}

func apiError(body []byte, code int) string {
	var e struct{ Error string }
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return e.Error
	}
	return fmt.Sprintf("HTTP %d: %s", code, strings.TrimSpace(string(body)))
}

// storagePath is /v1/storages/{storage} with the name escaped.
func storagePath(s *settings) string {
	return "/v1/storages/" + url.PathEscape(s.str("storage"))
}

// backendArg is the one positional BACKEND argument.
func backendArg(s *settings) (string, error) {
	if len(s.positional) != 1 {
		return "", &usageError{fmt.Errorf("name exactly one backend (got %d arguments)", len(s.positional))}
	}
	if err := checkName("backend", s.positional[0]); err != nil {
		return "", &usageError{err}
	}
	return s.positional[0], nil
}

// usageFail prints a command line error and returns 2.
func usageFail(s *settings, err error) int {
	fmt.Fprintf(s.std.err, "zeoraid %s: %v\nRun \"zeoraid %s --help\" for the flags.\n", s.section, err, s.section)
	return 2
}

// runStatus prints the proxy's state and exits like a Nagios check.
func runStatus(std stdio, args []string) int {
	s := cliSettings("status", "Prints every storage's array state. Exit code: 0 optimal, 1 recovering, 2 degraded, failed or unreachable.", std)
	if code, done := s.start(args); done {
		return code
	}
	body, code, err := cliRequest(s, "GET", "/v1/status")
	if err != nil {
		fmt.Fprintf(std.out, "CRITICAL: proxy unreachable: %v\n", err)
		return exitCritical
	}
	if code != http.StatusOK {
		fmt.Fprintf(std.out, "CRITICAL: %s\n", apiError(body, code))
		return exitCritical
	}
	var o httpapi.Overall
	if err := json.Unmarshal(body, &o); err != nil {
		fmt.Fprintf(std.out, "CRITICAL: bad answer: %v\n", err)
		return exitCritical
	}
	code = exitCritical
	switch o.Status {
	case raidcore.StatusOptimal:
		code = exitOK
	case raidcore.StatusRecovering:
		code = exitWarning
	}
	clusterCode, problems := clusterVerdict(o.Cluster)
	code = max(code, clusterCode)
	if s.boolean("json") {
		std.out.Write(body)
	} else {
		printStatus(std.out, o, code, problems)
	}
	return code
}

// clusterVerdict judges a member's view of the cluster: no leader, or a
// member that refuses writes (no quorum), is critical (nothing can be
// committed through it), a member that failed, is suspect
// or is unknown to gossip is a warning (the cluster serves, with less
// margin).
func clusterVerdict(c *cluster.Status) (int, []string) {
	if c == nil {
		return exitOK, nil
	}
	code := exitOK
	var problems []string
	switch {
	case c.Leader == "":
		code = exitCritical
		problems = append(problems, "no cluster leader: commits are refused")
	case !c.Writable && c.WritesRefused != "":
		code = exitCritical
		problems = append(problems, "this member refuses writes: "+c.WritesRefused)
	}
	for _, m := range c.Members {
		if m.Gossip != "alive" && m.Gossip != "left" {
			code = max(code, exitWarning)
			problems = append(problems, fmt.Sprintf("member %s is %s", m.ID, m.Gossip))
		}
	}
	return code, problems
}

func printStatus(out io.Writer, o httpapi.Overall, code int, problems []string) {
	label := map[int]string{exitOK: "OK", exitWarning: "WARNING", exitCritical: "CRITICAL"}
	line := fmt.Sprintf("%s: zeoraid %s", label[code], o.Status)
	if len(problems) > 0 {
		line += "; " + strings.Join(problems, "; ")
	}
	fmt.Fprintln(out, line)
	w := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	for _, st := range o.Storages {
		fmt.Fprintf(w, "storage %s\t%s\tlast tid %s\n", st.Storage, st.Status, st.LastTID)
		if st.Waiting != "" {
			fmt.Fprintf(w, "  waiting: %s\n", st.Waiting)
		}
		for _, warn := range st.Warnings {
			fmt.Fprintf(w, "  warning: %s\n", warn)
		}
		for _, b := range st.Backends {
			detail := b.Reason
			if b.By != "" && b.State != raidcore.Optimal {
				detail += " (" + b.By + ", " + b.Since.Format("2006-01-02 15:04:05") + ")"
			}
			if b.Note != "" {
				detail += "; " + b.Note
			}
			if r := b.Recovery; r != nil {
				detail = fmt.Sprintf("%s: %s at %s, %d transactions (%d bytes) copied, %s", b.Reason, r.Phase, r.TID, r.Transactions, r.Bytes, lagText(int64(r.LagTransactions), r.LagLowerBound, r.LagSeconds))
				if r.Error != "" {
					detail += ": " + r.Error
				}
			}
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\n", b.Name, b.State, b.LastTID, detail)
		}
	}
	w.Flush()
	if c := o.Cluster; c != nil {
		w = tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		leader := c.Leader
		if leader == "" {
			leader = "none"
		}
		fmt.Fprintf(w, "cluster\tmember %s\tleader %s\traft %s, term %d, applied %d of %d\n", c.ID, leader, c.RaftState, c.Term, c.AppliedIndex, c.LastIndex)
		for _, m := range c.Members {
			var down []string
			for st, bs := range m.Backends {
				for b, ok := range bs {
					if !ok {
						down = append(down, st+"/"+b)
					}
				}
			}
			sort.Strings(down)
			detail := "zeo " + orDash(m.ZEO) + ", http " + orDash(m.HTTP)
			if len(down) > 0 {
				detail += "; cannot reach " + strings.Join(down, ", ")
			}
			role := "voter"
			if !m.Voter {
				role = "not a voter"
			}
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\n", m.ID, m.Gossip, role, detail)
		}
		for _, name := range sortedKeys(c.Storages) {
			st := c.Storages[name]
			line := fmt.Sprintf("  storage %s\ttid ceiling %s\toid ceiling %d", name, st.TIDCeiling, st.OIDCeiling)
			if l := st.Lease; l != nil {
				if l.Holder != "" {
					line += fmt.Sprintf("\tlease held by %s for %s, %d waiting", l.Holder, l.TID, l.Waiting)
				} else {
					line += fmt.Sprintf("\tlease free, %d waiting", l.Waiting)
				}
			}
			fmt.Fprintln(w, line)
		}
	}
	w.Flush()
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// post sends an action; on failure it prints why and returns the exit
// code (unreachable or refused: 2).
func post(s *settings, path string) (body []byte, code int, ok bool) {
	body, status, err := cliRequest(s, "POST", path)
	if err != nil {
		fmt.Fprintf(s.std.err, "zeoraid %s: proxy unreachable: %v\n", s.section, err)
		return nil, exitCritical, false
	}
	if status >= 300 {
		fmt.Fprintf(s.std.err, "zeoraid %s: %s\n", s.section, apiError(body, status))
		return nil, exitCritical, false
	}
	return body, 0, true
}

// runDisable degrades a backend on purpose.
func runDisable(std stdio, args []string) int {
	s := cliSettings("disable", `Takes a backend out of service on purpose: the proxy degrades it (refused
for the last optimal one). Bring it back with "zeoraid recover BACKEND".`, std)
	s.allowArgs, s.argsUsage = true, "BACKEND"
	if code, done := s.start(args); done {
		return code
	}
	b, err := backendArg(s)
	if err != nil {
		return usageFail(s, err)
	}
	body, code, ok := post(s, storagePath(s)+"/backends/"+url.PathEscape(b)+"/disable")
	if !ok {
		return code
	}
	printResult(s, body, fmt.Sprintf("disabled %s", b))
	return exitOK
}

// runReload asks the proxy to reread its configuration and says what
// changed.
func runReload(std stdio, args []string) int {
	s := cliSettings("reload", `Makes the proxy reread its configuration: backends that appear are added
(degraded, then recovered), those that disappear are removed. Prints what
changed. Adding or removing whole storages needs a restart.`, std)
	if code, done := s.start(args); done {
		return code
	}
	body, code, ok := post(s, "/v1/reload")
	if !ok {
		return code
	}
	if s.boolean("json") {
		std.out.Write(body)
		return exitOK
	}
	var rep struct {
		Added   []string `json:"added"`
		Removed []string `json:"removed"`
	}
	if err := json.Unmarshal(body, &rep); err != nil {
		fmt.Fprintf(std.err, "zeoraid reload: reloaded, but the answer is not understood: %v\n", err)
		return exitCritical
	}
	fmt.Fprintln(std.out, reloadText(rep.Added, rep.Removed))
	return exitOK
}

// reloadText describes a reload: "reloaded: added 1/b3; removed 1/b2".
func reloadText(added, removed []string) string {
	if len(added) == 0 && len(removed) == 0 {
		return "reloaded: no change"
	}
	var parts []string
	if len(added) > 0 {
		parts = append(parts, "added "+strings.Join(added, ", "))
	}
	if len(removed) > 0 {
		parts = append(parts, "removed "+strings.Join(removed, ", "))
	}
	return "reloaded: " + strings.Join(parts, "; ")
}

// runVerify compares the backends of a storage.
func runVerify(std stdio, args []string) int {
	s := cliSettings("verify", `Compares every backend's transactions (tids, metadata, record hashes) and
the content of every blob (SHA-256), and reports the first difference.
Exit code: 0 identical, 2 different or unreachable.`, std)
	if code, done := s.start(args); done {
		return code
	}
	body, code, ok := post(s, storagePath(s)+"/verify")
	if !ok {
		return code
	}
	var rep raidcore.VerifyReport
	if err := json.Unmarshal(body, &rep); err != nil {
		fmt.Fprintf(std.out, "CRITICAL: bad answer: %v\n", err)
		return exitCritical
	}
	if s.boolean("json") {
		std.out.Write(body)
	} else if rep.Identical {
		blobs := ""
		if rep.Blobs > 0 {
			blobs = fmt.Sprintf(" (with %d blobs, %d bytes)", rep.Blobs, rep.BlobBytes)
		}
		fmt.Fprintf(std.out, "OK: %d transactions%s identical on %s\n", rep.Transactions, blobs, strings.Join(rep.Backends, ", "))
	} else {
		fmt.Fprintf(std.out, "CRITICAL: backends differ after %d identical transactions: %s\n", rep.Transactions, rep.FirstDifference)
	}
	if rep.Identical {
		return exitOK
	}
	return exitCritical
}

// runLeave asks the cluster to remove a member (a proxy that is to be
// retired: stop its process afterwards).
func runLeave(std stdio, args []string) int {
	s := cliSettings("leave", `Removes a member from the cluster: the leader takes it out of the registry
and of the Raft configuration (asked through the member at --url, which
may be any member). Stop the removed member's process afterwards. A
member that is only down (it will come back) should not be removed: the
cluster keeps working without it while a majority of members is up.`, std)
	s.allowArgs, s.argsUsage = true, "MEMBER"
	if code, done := s.start(args); done {
		return code
	}
	if len(s.positional) != 1 {
		return usageFail(s, &usageError{fmt.Errorf("name exactly one member (got %d arguments)", len(s.positional))})
	}
	id := s.positional[0]
	if err := checkName("node", id); err != nil {
		return usageFail(s, &usageError{err})
	}
	body, code, ok := post(s, "/v1/cluster/leave?member="+url.QueryEscape(id))
	if !ok {
		return code
	}
	printResult(s, body, fmt.Sprintf("%s left the cluster", id))
	return exitOK
}

// printResult prints an action's answer: as it came with --json, else its
// "result" line (fallback when it has none).
func printResult(s *settings, body []byte, fallback string) {
	if s.boolean("json") {
		s.std.out.Write(body)
		return
	}
	var out struct{ Result string }
	if json.Unmarshal(body, &out) == nil && out.Result != "" {
		fmt.Fprintln(s.std.out, out.Result)
	} else {
		fmt.Fprintln(s.std.out, fallback)
	}
}

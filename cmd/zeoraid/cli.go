package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/zeoraid/zeoraid/cluster/httpapi"
	"github.com/zeoraid/zeoraid/raidcore"
)

// Nagios-style exit codes of status and verify.
const (
	exitOK       = 0
	exitWarning  = 1 // recovering
	exitCritical = 2 // degraded, failed, unreachable, different
)

func cliSettings(cmd string) *settings {
	s := newSettings(cmd)
	s.fs.String("url", "http://127.0.0.1:8180", "the proxy's HTTP API")
	s.fs.String("token", "", "admin token for actions (also ZEORAID_<COMMAND>_TOKEN)")
	s.fs.String("storage", "1", "storage name")
	s.fs.Duration("timeout", 30*time.Second, "request timeout")
	return s
}

func cliRequest(s *settings, method, path string) ([]byte, int, error) {
	url := strings.TrimRight(s.str("url"), "/") + path
	req, err := http.NewRequest(method, url, bytes.NewReader(nil))
	if err != nil {
		return nil, 0, err
	}
	if t := s.str("token"); t != "" {
		req.Header.Set("Authorization", "Bearer "+t)
	}
	client := &http.Client{Timeout: s.v.GetDuration(s.key("timeout"))}
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

// runStatus prints the proxy's state and exits like a Nagios check.
func runStatus(args []string) int {
	s := cliSettings("status")
	s.fs.Bool("json", false, "print the JSON status")
	s.fs.Usage = func() {
		s.usage("Prints every storage's array state. Exit code: 0 optimal, 1 recovering, 2 degraded, failed or unreachable.")
	}
	if err := s.parse(args); err != nil {
		if err.Error() == "pflag: help requested" {
			return 0
		}
		fmt.Fprintln(os.Stderr, "zeoraid status:", err)
		return exitCritical
	}
	body, code, err := cliRequest(s, "GET", "/v1/status")
	if err != nil {
		fmt.Printf("CRITICAL: proxy unreachable: %v\n", err)
		return exitCritical
	}
	if code != http.StatusOK {
		fmt.Printf("CRITICAL: %s\n", apiError(body, code))
		return exitCritical
	}
	var o httpapi.Overall
	if err := json.Unmarshal(body, &o); err != nil {
		fmt.Printf("CRITICAL: bad answer: %v\n", err)
		return exitCritical
	}
	if s.boolean("json") {
		os.Stdout.Write(body)
	} else {
		printStatus(o)
	}
	switch o.Status {
	case raidcore.StatusOptimal:
		return exitOK
	case raidcore.StatusRecovering:
		return exitWarning
	}
	return exitCritical
}

func printStatus(o httpapi.Overall) {
	label := map[string]string{raidcore.StatusOptimal: "OK", raidcore.StatusRecovering: "WARNING", raidcore.StatusDegraded: "CRITICAL", raidcore.StatusFailed: "CRITICAL"}
	fmt.Printf("%s: zeoraid %s\n", label[o.Status], o.Status)
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	for _, st := range o.Storages {
		fmt.Fprintf(w, "storage %s\t%s\tlast tid %s\n", st.Storage, st.Status, st.LastTID)
		for _, b := range st.Backends {
			detail := b.Reason
			if r := b.Recovery; r != nil {
				detail = fmt.Sprintf("%s: %s at %s, %d transactions (%d bytes) copied, %d behind", b.Reason, r.Phase, r.TID, r.Transactions, r.Bytes, r.LagTransactions)
				if r.Error != "" {
					detail += ": " + r.Error
				}
			}
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\n", b.Name, b.State, b.LastTID, detail)
		}
	}
	w.Flush()
}

// runAction posts one action to the proxy.
func runAction(cmd, summary string, path func(s *settings) (string, error)) func([]string) int {
	return func(args []string) int {
		s := cliSettings(cmd)
		s.allowArgs = true
		s.fs.Usage = func() { s.usage(summary) }
		if err := s.parse(args); err != nil {
			if err.Error() == "pflag: help requested" {
				return 0
			}
			fmt.Fprintf(os.Stderr, "zeoraid %s: %v\n", cmd, err)
			return 2
		}
		p, err := path(s)
		if err != nil {
			fmt.Fprintf(os.Stderr, "zeoraid %s: %v\n", cmd, err)
			return 2
		}
		body, code, err := cliRequest(s, "POST", p)
		if err != nil {
			fmt.Fprintf(os.Stderr, "zeoraid %s: proxy unreachable: %v\n", cmd, err)
			return exitCritical
		}
		if code >= 300 {
			fmt.Fprintf(os.Stderr, "zeoraid %s: %s\n", cmd, apiError(body, code))
			return exitCritical
		}
		if cmd == "verify" {
			var rep raidcore.VerifyReport
			json.Unmarshal(body, &rep)
			if rep.Identical {
				fmt.Printf("OK: %d transactions identical on %s\n", rep.Transactions, strings.Join(rep.Backends, ", "))
				return exitOK
			}
			fmt.Printf("CRITICAL: backends differ after %d identical transactions: %s\n", rep.Transactions, rep.FirstDifference)
			return exitCritical
		}
		var out map[string]any
		if json.Unmarshal(body, &out) == nil {
			if r, ok := out["result"]; ok {
				fmt.Println(r)
				return exitOK
			}
		}
		os.Stdout.Write(body)
		return exitOK
	}
}

func backendPath(action string) func(s *settings) (string, error) {
	return func(s *settings) (string, error) {
		if len(s.positional) != 1 {
			return "", fmt.Errorf("name exactly one backend (got %d arguments)", len(s.positional))
		}
		return fmt.Sprintf("/v1/storages/%s/backends/%s/%s", s.str("storage"), s.positional[0], action), nil
	}
}

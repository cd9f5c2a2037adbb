package cluster

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/zeoraid/zeoraid/fsm"
)

// joinAnswer is the answer of POST /v1/cluster/join.
type joinAnswer struct {
	Error string `json:"error,omitempty"`
	// Gossip: the members' gossip addresses, for the new member to join.
	Gossip []string `json:"gossip,omitempty"`
	Result string   `json:"result,omitempty"`
}

// Authorized tells whether r carries token as "Authorization: Bearer
// <token>" (always, when token is empty); the comparison takes constant
// time. Every HTTP endpoint that needs the admin token uses it.
func Authorized(r *http.Request, token string) bool {
	if token == "" {
		return true
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

func writeJoinAnswer(w http.ResponseWriter, code int, a joinAnswer) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(a)
}

// joinHandler serves POST /v1/cluster/join: the body is the new member's
// registry entry (id, raft, http, zeo, gossip, version); the leader adds
// it (asked through this member when it does not lead).
func (m *Member) joinHandler() http.Handler {
	return m.adminPOST("joining", func(w http.ResponseWriter, r *http.Request) {
		var p fsm.Proxy
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			writeJoinAnswer(w, http.StatusBadRequest, joinAnswer{Error: "bad join request: " + err.Error()})
			return
		}
		if err := m.Node.Join(r.Context(), p); err != nil {
			writeJoinAnswer(w, membershipErrorCode(err), joinAnswer{Error: err.Error()})
			return
		}
		var gossip []string
		for _, gm := range m.Gossip.Members() {
			if gm.State == "alive" && gm.ID != p.ID {
				gossip = append(gossip, gm.Addr)
			}
		}
		writeJoinAnswer(w, http.StatusOK, joinAnswer{Result: "joined " + p.ID, Gossip: gossip})
	})
}

// adminPOST serves h for POST requests that carry the admin token; what
// names the action for the refusal.
func (m *Member) adminPOST(what string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			writeJoinAnswer(w, http.StatusMethodNotAllowed, joinAnswer{Error: "POST only"})
			return
		}
		if !Authorized(r, m.cfg.Token) {
			writeJoinAnswer(w, http.StatusUnauthorized, joinAnswer{Error: what + " needs the admin token (Authorization: Bearer ...)"})
			return
		}
		h(w, r)
	})
}

// membershipErrorCode: a join or leave that cannot be done as asked is a
// conflict; anything else (no leader) is worth trying again later.
func membershipErrorCode(err error) int {
	if errors.Is(err, ErrInvalidMember) {
		return http.StatusConflict
	}
	return http.StatusServiceUnavailable
}

// leaveHandler serves POST /v1/cluster/leave?member=ID: the leader
// removes the member from the registry and the raft configuration. Stop
// the member's process afterwards (it no longer takes part in decisions).
func (m *Member) leaveHandler() http.Handler {
	return m.adminPOST("leaving", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("member")
		if id == "" {
			writeJoinAnswer(w, http.StatusBadRequest, joinAnswer{Error: "say which member leaves: ?member=ID"})
			return
		}
		if err := m.Node.Leave(r.Context(), id); err != nil {
			writeJoinAnswer(w, membershipErrorCode(err), joinAnswer{Error: err.Error()})
			return
		}
		writeJoinAnswer(w, http.StatusOK, joinAnswer{Result: id + " left the cluster; stop its process now"})
	})
}

// postJoin asks the member at addr (host:port of its HTTP API) to add p,
// and returns the members' gossip addresses.
func postJoin(ctx context.Context, addr, token string, p fsm.Proxy) ([]string, error) {
	body, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/v1/cluster/join", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	c := &http.Client{Timeout: 20 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var a joinAnswer
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&a); err != nil {
		return nil, fmt.Errorf("join through %s: status %d, unreadable answer: %v", addr, resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("join through %s: %s", addr, a.Error)
	}
	return a.Gossip, nil
}

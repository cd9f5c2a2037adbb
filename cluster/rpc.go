package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/zeoraid/zeoraid/fsm"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// The leader API over HTTP: a follower forwards its Raft writes, read
// barriers and lease calls to the leader's HTTP address (from the proxy
// registry in the replicated state). Requests and answers are JSON;
// errors travel as a code and a message and are turned back into the
// errors the callers test with errors.Is.

const rpcPrefix = "/v1/cluster/rpc/"

type rpcRequest struct {
	Entry    []byte `json:"entry,omitempty"`
	Storage  string `json:"storage,omitempty"`
	Explicit string `json:"explicit,omitempty"`
	Holder   string `json:"holder,omitempty"`
	ID       uint64 `json:"id,omitempty"`
	Clean    bool   `json:"clean,omitempty"`
	// Proxy is a joining member; Member a leaving one.
	Proxy  *fsm.Proxy `json:"proxy,omitempty"`
	Member string     `json:"member,omitempty"`
}

type rpcAnswer struct {
	Error *rpcError `json:"error,omitempty"`
	Index uint64    `json:"index,omitempty"`
	// Kind and Value carry an fsm result.
	Kind     string          `json:"kind,omitempty"`
	Value    json.RawMessage `json:"value,omitempty"`
	TID      string          `json:"tid,omitempty"`
	ID       uint64          `json:"id,omitempty"`
	Deadline time.Time       `json:"deadline,omitempty"`
	// Unsettled: see Grant.
	Unsettled bool `json:"unsettled,omitempty"`
	// Leases answers "leases".
	Leases map[string]*LeaseStatus `json:"leases,omitempty"`
}

type rpcError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// errorCodes maps the errors that cross the wire to their codes.
var errorCodes = []struct {
	code string
	err  error
}{
	{"not_leader", ErrNotLeader},
	{"unknown_lease", ErrUnknownLease},
	{"stale", fsm.ErrStale},
	{"last_optimal", fsm.ErrLastOptimal},
	{"unknown_storage", fsm.ErrUnknownStorage},
	{"unknown_backend", fsm.ErrUnknownBackend},
	{"backend_exists", fsm.ErrBackendExists},
	{"invalid", fsm.ErrInvalid},
	{"invalid_member", ErrInvalidMember},
}

func encodeError(err error) *rpcError {
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			return &rpcError{Code: c.code, Message: err.Error()}
		}
	}
	var ste *zodb.StorageTransactionError
	if errors.As(err, &ste) {
		return &rpcError{Code: "storage_transaction", Message: ste.Error()}
	}
	var se *zodb.StorageError
	if errors.As(err, &se) {
		return &rpcError{Code: "storage", Message: se.Error()}
	}
	return &rpcError{Code: "other", Message: err.Error()}
}

// remoteError is an error that came over the wire: its message as sent,
// and Is true for the sentinel its code names.
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

func decodeError(e *rpcError) error {
	switch e.Code {
	case "storage_transaction":
		return zodb.NewStorageTransactionError("%s", e.Message)
	case "storage":
		return zodb.NewStorageError("%s", e.Message)
	}
	for _, c := range errorCodes {
		if c.code == e.Code {
			return &remoteError{msg: e.Message, sentinel: c.err}
		}
	}
	return errors.New(e.Message)
}

// encodeResult puts an fsm result into an answer.
func encodeResult(a *rpcAnswer, res any) error {
	if err, ok := res.(error); ok {
		a.Kind, a.Error = "error", encodeError(err)
		return nil
	}
	switch res.(type) {
	case nil:
		a.Kind = "nil"
		return nil
	case *fsm.Storage:
		a.Kind = "storage"
	case map[string]fsm.Row:
		a.Kind = "table"
	case uint64:
		a.Kind = "uint"
	case fsm.OIDRange:
		a.Kind = "oids"
	case time.Duration:
		a.Kind = "duration"
	default:
		return fmt.Errorf("cluster: cannot send a result of type %T", res)
	}
	b, err := json.Marshal(res)
	a.Value = b
	return err
}

// decodeResult turns an answer back into the fsm result (an fsm rule
// error comes back as the result, as from a local Apply).
func decodeResult(a *rpcAnswer) (any, error) {
	var v any
	switch a.Kind {
	case "nil":
		return nil, nil
	case "error":
		return decodeError(a.Error), nil
	case "storage":
		v = &fsm.Storage{}
		if err := json.Unmarshal(a.Value, v); err != nil {
			return nil, err
		}
		return v, nil
	case "table":
		var t map[string]fsm.Row
		err := json.Unmarshal(a.Value, &t)
		return t, err
	case "uint":
		var u uint64
		err := json.Unmarshal(a.Value, &u)
		return u, err
	case "oids":
		var r fsm.OIDRange
		err := json.Unmarshal(a.Value, &r)
		return r, err
	case "duration":
		var d time.Duration
		err := json.Unmarshal(a.Value, &d)
		return d, err
	}
	return nil, fmt.Errorf("cluster: unknown result kind %q", a.Kind)
}

// RPCHandler serves this node's LeaderAPI to the other nodes under
// /v1/cluster/rpc/. With a token, requests must carry it as a bearer
// token.
func (n *Node) RPCHandler(token string) http.Handler {
	api := n.LeaderAPI()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		if !Authorized(r, token) {
			http.Error(w, "cluster rpc: wrong or missing token", http.StatusUnauthorized)
			return
		}
		var req rpcRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 16<<20)).Decode(&req); err != nil {
			http.Error(w, "cluster rpc: "+err.Error(), http.StatusBadRequest)
			return
		}
		ctx := r.Context()
		var a rpcAnswer
		var err error
		switch r.URL.Path[len(rpcPrefix):] {
		case "apply":
			var res any
			res, a.Index, err = api.Apply(ctx, req.Entry)
			if err == nil {
				err = encodeResult(&a, res)
			}
		case "barrier":
			a.Index, err = api.Barrier(ctx)
		case "acquire":
			var explicit zodb.TID
			if req.Explicit != "" {
				if explicit, err = zodb.ParseTID(req.Explicit); err != nil {
					http.Error(w, "cluster rpc: "+err.Error(), http.StatusBadRequest)
					return
				}
			}
			var g Grant
			if g, err = api.Acquire(ctx, req.Storage, explicit, req.Holder); err == nil {
				a.ID, a.TID, a.Deadline, a.Unsettled, a.Index = g.ID, g.TID.String(), g.Deadline, g.Unsettled, g.Index
			}
		case "renew":
			a.Deadline, err = api.Renew(ctx, req.Storage, req.ID)
		case "release":
			err = api.Release(ctx, req.Storage, req.ID, req.Clean)
		case "join":
			if req.Proxy == nil {
				http.Error(w, "cluster rpc: join without a proxy", http.StatusBadRequest)
				return
			}
			err = api.Join(ctx, *req.Proxy)
		case "leave":
			err = api.Leave(ctx, req.Member)
		case "leases":
			a.Leases, err = api.Leases(ctx)
		default:
			http.NotFound(w, r)
			return
		}
		if err != nil {
			a.Kind, a.Error = "", encodeError(err)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(&a)
	})
}

// HTTPForwarder reaches the leader over HTTP.
type HTTPForwarder struct {
	// Resolve returns the HTTP address (host:port) of a node.
	Resolve func(id string) (string, bool)
	Token   string
	Client  *http.Client
}

// Leader implements Forwarder.
func (f *HTTPForwarder) Leader(id string) (LeaderAPI, error) {
	addr, ok := f.Resolve(id)
	if !ok || addr == "" {
		return nil, fmt.Errorf("cluster: no HTTP address known for node %s", id)
	}
	c := f.Client
	if c == nil {
		c = http.DefaultClient
	}
	return &httpLeader{base: "http://" + addr + rpcPrefix, token: f.Token, client: c}, nil
}

type httpLeader struct {
	base, token string
	client      *http.Client
}

func (h *httpLeader) call(ctx context.Context, op string, req rpcRequest) (*rpcAnswer, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, h.base+op, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	if h.token != "" {
		hr.Header.Set("Authorization", "Bearer "+h.token)
	}
	resp, err := h.client.Do(hr)
	if err != nil {
		// The leader is unreachable: to the caller, as if it were not the
		// leader any more (it retries, then says there is no leader).
		return nil, fmt.Errorf("%w (%v)", ErrNotLeader, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("cluster rpc %s: %s: %s", op, resp.Status, bytes.TrimSpace(msg))
	}
	var a rpcAnswer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		return nil, fmt.Errorf("cluster rpc %s: %w", op, err)
	}
	if a.Error != nil && a.Kind != "error" {
		return nil, decodeError(a.Error)
	}
	return &a, nil
}

func (h *httpLeader) Apply(ctx context.Context, entry []byte) (any, uint64, error) {
	a, err := h.call(ctx, "apply", rpcRequest{Entry: entry})
	if err != nil {
		return nil, 0, err
	}
	res, err := decodeResult(a)
	return res, a.Index, err
}

func (h *httpLeader) Barrier(ctx context.Context) (uint64, error) {
	a, err := h.call(ctx, "barrier", rpcRequest{})
	if err != nil {
		return 0, err
	}
	return a.Index, nil
}

func (h *httpLeader) Acquire(ctx context.Context, storage string, explicit zodb.TID, holder string) (Grant, error) {
	req := rpcRequest{Storage: storage, Holder: holder}
	if !explicit.IsZero() {
		req.Explicit = explicit.String()
	}
	a, err := h.call(ctx, "acquire", req)
	if err != nil {
		return Grant{}, err
	}
	tid, err := zodb.ParseTID(a.TID)
	if err != nil {
		return Grant{}, fmt.Errorf("cluster rpc acquire: %w", err)
	}
	return Grant{ID: a.ID, TID: tid, Deadline: a.Deadline, Unsettled: a.Unsettled, Index: a.Index}, nil
}

func (h *httpLeader) Renew(ctx context.Context, storage string, id uint64) (time.Time, error) {
	a, err := h.call(ctx, "renew", rpcRequest{Storage: storage, ID: id})
	if err != nil {
		return time.Time{}, err
	}
	return a.Deadline, nil
}

func (h *httpLeader) Release(ctx context.Context, storage string, id uint64, clean bool) error {
	_, err := h.call(ctx, "release", rpcRequest{Storage: storage, ID: id, Clean: clean})
	return err
}

func (h *httpLeader) Join(ctx context.Context, p fsm.Proxy) error {
	_, err := h.call(ctx, "join", rpcRequest{Proxy: &p})
	return err
}

func (h *httpLeader) Leave(ctx context.Context, id string) error {
	_, err := h.call(ctx, "leave", rpcRequest{Member: id})
	return err
}

func (h *httpLeader) Leases(ctx context.Context) (map[string]*LeaseStatus, error) {
	a, err := h.call(ctx, "leases", rpcRequest{})
	if err != nil {
		return nil, err
	}
	return a.Leases, nil
}

package cluster

import (
	"github.com/zeoraid/zeoraid/fsm"
	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// toRow converts a raidcore row to the FSM's (fsm imports nothing of
// raidcore).
func toRow(b raidcore.BackendState) fsm.Row {
	return fsm.Row{State: string(b.State), Reason: b.Reason, Since: b.Since.UTC(), By: b.By,
		LastTID: b.LastTID.Uint64(), PackedTo: b.PackedTo.Uint64(), VerifiedTo: b.VerifiedTo.Uint64(),
		Owner: b.Owner, Version: b.Version}
}

// fromRow converts an FSM row to raidcore's.
func fromRow(r fsm.Row) raidcore.BackendState {
	return raidcore.BackendState{State: raidcore.State(r.State), Reason: r.Reason, Since: r.Since, By: r.By,
		LastTID: zodb.TIDFromUint64(r.LastTID), PackedTo: zodb.TIDFromUint64(r.PackedTo), VerifiedTo: zodb.TIDFromUint64(r.VerifiedTo),
		Owner: r.Owner, Version: r.Version}
}

// toTable converts an FSM table to raidcore's.
func toTable(rows map[string]fsm.Row) raidcore.Table {
	if rows == nil {
		return nil
	}
	t := make(raidcore.Table, len(rows))
	for n, r := range rows {
		t[n] = fromRow(r)
	}
	return t
}

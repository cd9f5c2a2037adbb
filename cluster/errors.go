package cluster

import (
	"errors"

	"github.com/zeoraid/zeoraid/raidcore"
)

// Errors of the cluster.
var (
	// ErrNotLeader: a leader-only call reached a node that is not the
	// leader (callers forward or retry).
	ErrNotLeader = errors.New("cluster: this node is not the leader")
	// ErrNoLeader: no leader was known within the hold time (an election
	// is going on, or this node is in a minority and cannot reach a
	// quorum). Commits are refused then.
	// It is a raidcore.ErrUnavailable: an array starting up waits for it.
	ErrNoLeader error = &unavailableError{"cluster: no leader; this proxy cannot reach a quorum of the cluster, so it refuses commits"}
	// ErrClosed: the node was closed.
	ErrClosed = errors.New("cluster: node closed")
	// ErrUnknownLease: a renew or release of a lease the leader does not
	// hold (it ended, or another leader granted it).
	ErrUnknownLease = errors.New("cluster: the commit lease is no longer held")
)

// unavailableError is an error that is also raidcore.ErrUnavailable.
type unavailableError struct{ msg string }

func (e *unavailableError) Error() string        { return e.msg }
func (e *unavailableError) Is(target error) bool { return target == raidcore.ErrUnavailable }

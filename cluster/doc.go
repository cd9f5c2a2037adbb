// Package cluster will hold the Raft wiring (raft-boltdb log, TCP
// transport, snapshots, bootstrap and join, the leader loop), memberlist
// gossip for proxy liveness and backend health views, leader forwarding,
// the raidcore.Coordinator implementation and the HTTP API.
//
// It is empty until the cluster issue lands; see architecture.md.
package cluster

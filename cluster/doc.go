// Package cluster makes several proxies one RAID controller: a Raft node
// (Node) applying the replicated state of package fsm, the leader's
// commit lease service (FIFO grants with tids from a window below a tid
// ceiling committed in Raft), and Coordinator, the raidcore.Coordinator
// whose every decision is committed through the leader before it is
// answered. Followers reach the leader through a Forwarder (LeaderAPI).
// Subpackage httpapi is the operators' HTTP interface.
//
// OpenStores and NewTCPTransport give a node its durable state (raft-boltdb,
// file snapshots) and raft's TCP transport. Still to come (issue 8): the
// wiring in the proxy, join and leave, memberlist liveness and
// backend views, reconciling a dead lease holder's transaction, recovery
// ownership. DESIGN.md has the arguments.
package cluster

// Package cluster makes several proxies one RAID controller: a Raft node
// (Node) applying the replicated state of package fsm, the leader's
// commit lease service (FIFO grants with tids from a window below a tid
// ceiling committed in Raft), and Coordinator, the raidcore.Coordinator
// whose every decision is committed through the leader before it is
// answered. Followers reach the leader through a Forwarder (LeaderAPI).
// Subpackage httpapi is the operators' HTTP interface.
//
// OpenStores and NewTCPTransport give a node its durable state (raft-boltdb,
// file snapshots) and raft's TCP transport. Member is a proxy's membership
// (node, TCP transport, Gossip for liveness and backend views, the
// registry entry, join and leave over HTTP); Lone is a proxy without
// peers, a one-voter cluster on the same code. The leader degrades
// backends a majority cannot reach and takes back the leases and
// recoveries of failed proxies (detect.go); Node.Writable says whether
// this node may take writes (quorum). DESIGN.md has the arguments.
package cluster

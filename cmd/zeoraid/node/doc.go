// Package node assembles a zeoraid proxy on one node from raidcore and
// transport: for every storage a RAID-1 array over ZEO clients to its
// backends, served to ZODB clients by a ZEO server, with gocept.zeoraid's
// management methods (raid_status, raid_details, raid_disable,
// raid_recover, raid_reload) as ZEO extension methods, configuration
// reload (add and remove backends), optional automatic recovery, and the
// admission of registrations (a proxy without quorum takes no writable
// client; a registration waits until the array has caught up). The
// coordinator is passed in: the local one for a lone proxy, a
// cluster.Member's in a cluster (cmd/zeoraid wires them).
package node

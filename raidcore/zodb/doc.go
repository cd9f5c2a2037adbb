// Package zodb is the ZODB vocabulary shared by every other package of
// zeoraid: object and transaction ids (with persistent's TimeStamp math,
// bit for bit), transaction metadata and operations, the Storage interface
// that the built-in backend, the ZEO client, the in-memory test storage and
// the RAID array implement and that the ZEO server serves, and typed errors
// for every ZODB POSException a client can receive.
//
// The package imports nothing else from the module; everything else imports
// it.
package zodb

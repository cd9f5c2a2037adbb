// Package integration holds tests that build the zeoraid binary and run
// real processes: Python ZODB clients and ZEO servers when they can be
// imported (the tests skip with a message saying so otherwise), and later
// multi-process and container clusters. It contains no production code.
package integration

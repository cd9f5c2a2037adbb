//go:build race

package zeoclient_test

// raceEnabled: the race detector slows bulk copies down about tenfold, so
// data-heavy tests use less data.
const raceEnabled = true

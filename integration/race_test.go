//go:build race

package integration

// raceEnabled: the tests run with -race, so the zeoraid binary under test
// is built with -race too.
const raceEnabled = true

//go:build !race

package zeoclient_test

const raceEnabled = false

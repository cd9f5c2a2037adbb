package raidcore

import (
	"testing"
	"time"
)

// converging decides whether a recovery pauses commits; these are the
// cases the integration and chaos tests run into.
func TestConverging(t *testing.T) {
	second := func(copied, committed int64) copyRound {
		return copyRound{copied: copied, committed: committed, elapsed: time.Second}
	}
	for _, c := range []struct {
		name   string
		rounds []copyRound
		left   float64
		want   bool
	}{
		{"nothing measured yet", nil, 500, true},
		{"nothing left", []copyRound{second(0, 0)}, 0, true},
		{"clients commit as fast as the copy goes", []copyRound{second(100, 100), second(100, 100)}, 50, false},
		{"clients commit faster", []copyRound{second(100, 120)}, 50, false},
		// TestProxyKillBackendUnderLoad: 110 copied and 105 committed a
		// second, 400 behind: 80 s to go at 5 a second, while a pause
		// would copy it all in under 4 s.
		{"gaining a little on a full load", []copyRound{second(107, 105), second(108, 112), second(116, 105)}, 400, false},
		{"gaining a little, nearly done", []copyRound{second(110, 105), second(110, 105)}, 30, true},
		// TestRecoveryAfterARestartDoesNotHoldTheLeaseLong: 280 copied,
		// 90 committed a second, 3000 behind.
		{"gaining fast on a large backlog", []copyRound{second(276, 90), second(284, 92)}, 3000, true},
		// Clients at half the copy's pace (the mission's bar): never paused.
		{"half load", []copyRound{second(100, 50), second(100, 50)}, 2000, true},
		// A backlog that would take hours even gaining fast.
		{"hours to go", []copyRound{second(200, 50)}, 1e6, false},
		{"one noisy round among good ones", []copyRound{second(280, 90), second(10, 90), second(280, 90)}, 3000, true},
	} {
		if got, _ := converging(c.rounds, c.left); got != c.want {
			t.Errorf("%s: converging = %v, want %v", c.name, got, c.want)
		}
	}
	if _, rate := converging([]copyRound{second(100, 0), {copied: 100, elapsed: 3 * time.Second}}, 10); rate != 50 {
		t.Errorf("rate over 200 transactions in 4 s = %v, want 50", rate)
	}
}

// After a proxy restart the count is a lower bound; the gap in time at
// the clients' rate estimates the rest.
func TestEstimateLeft(t *testing.T) {
	rounds := []copyRound{{copied: 75, committed: 45, elapsed: time.Second}, {copied: 75, committed: 45, elapsed: time.Second}}
	for _, c := range []struct {
		name  string
		count int
		exact bool
		gap   time.Duration
		want  float64
	}{
		{"exact", 300, true, time.Hour, 300},
		// The 10-minute chaos run: 460 s behind, clients at 45 a second,
		// the array remembering 4645 since its restart.
		{"lower bound, long gap", 4645, false, 460 * time.Second, 20700},
		// A burst committed before a quiet spell: the count says more.
		{"lower bound, short gap", 900, false, 10 * time.Second, 900},
	} {
		if got := estimateLeft(c.count, c.exact, c.gap, rounds); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	if got := estimateLeft(7, false, time.Minute, nil); got != 7 {
		t.Errorf("without rounds: %v", got)
	}
	// With that estimate, the chaos run's healing copy (75 a second
	// against 45) no longer counts as converging: 20700 left at 30 a
	// second is more than maxConverge.
	if ok, _ := converging(rounds, estimateLeft(4645, false, 460*time.Second, rounds)); ok {
		t.Error("a copy 11 minutes from done counts as converging")
	}
}

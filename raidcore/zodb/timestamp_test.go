package zodb

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

type tsVectors struct {
	FromFields []struct {
		Args     []float64 `json:"args"`
		RawHex   string    `json:"raw_hex"`
		Str      string    `json:"str"`
		Fields   []float64 `json:"fields"`
		TimeTime float64   `json:"timeTime"`
	} `json:"from_fields"`
	FromFieldsErrors []struct {
		Args  []float64 `json:"args"`
		Error string    `json:"error"`
	} `json:"from_fields_errors"`
	FromRaw []struct {
		RawHex   string    `json:"raw_hex"`
		Str      string    `json:"str"`
		Fields   []float64 `json:"fields"`
		TimeTime float64   `json:"timeTime"`
	} `json:"from_raw"`
	LaterThan []struct {
		SelfHex, OtherHex, ResultHex string
		ResultIsSelf                 bool `json:"result_is_self"`
		Note                         string
	} `json:"laterThan"`
	NewTid []struct {
		OldHex    string `json:"old_hex"`
		ResultHex *string
	} `json:"newTid"`
}

func loadVectors(t *testing.T) tsVectors {
	t.Helper()
	b, err := os.ReadFile("testdata/timestamp-vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	// The laterThan entries use snake_case keys.
	s := strings.NewReplacer(`"self_hex"`, `"SelfHex"`, `"other_hex"`, `"OtherHex"`, `"result_hex"`, `"ResultHex"`).Replace(string(b))
	var v tsVectors
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatal(err)
	}
	if len(v.FromFields) < 100 || len(v.FromRaw) < 40 || len(v.LaterThan) < 70 || len(v.FromFieldsErrors) < 12 {
		t.Fatalf("vector file looks truncated: %d %d %d %d", len(v.FromFields), len(v.FromRaw), len(v.LaterThan), len(v.FromFieldsErrors))
	}
	return v
}

func mustTID(t *testing.T, s string) TID {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	tid, err := TIDFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return tid
}

func checkFields(t *testing.T, tid TID, want []float64, str string, timeTime float64) {
	t.Helper()
	f := tid.Fields()
	got := []float64{float64(f.Year), float64(f.Month), float64(f.Day), float64(f.Hour), float64(f.Minute), f.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%s: fields %v, want %v", tid, got, want)
			break
		}
	}
	if s := tid.TimeStampString(); s != str {
		t.Errorf("%s: str %q, want %q", tid, s, str)
	}
	if tt := tid.TimeTime(); tt != timeTime {
		t.Errorf("%s: timeTime %v, want %v", tid, tt, timeTime)
	}
}

func TestTimeStampFromFields(t *testing.T) {
	v := loadVectors(t)
	for _, c := range v.FromFields {
		a := c.Args
		tid, err := TIDFromFields(int(a[0]), int(a[1]), int(a[2]), int(a[3]), int(a[4]), a[5])
		if err != nil {
			t.Errorf("%v: %v", a, err)
			continue
		}
		if got := hex.EncodeToString(tid[:]); got != c.RawHex {
			t.Errorf("%v: raw %s, want %s", a, got, c.RawHex)
		}
		checkFields(t, tid, c.Fields, c.Str, c.TimeTime)
	}
}

func TestTimeStampFromFieldsErrors(t *testing.T) {
	v := loadVectors(t)
	for _, c := range v.FromFieldsErrors {
		a := c.Args
		_, err := TIDFromFields(int(a[0]), int(a[1]), int(a[2]), int(a[3]), int(a[4]), a[5])
		if err == nil {
			t.Errorf("%v: accepted, want %s", a, c.Error)
			continue
		}
		if want := strings.TrimPrefix(c.Error, "ValueError: "); err.Error() != want {
			t.Errorf("%v: error %q, want %q", a, err, want)
		}
	}
	for _, sec := range []float64{-1, 60, 61} {
		if _, err := TIDFromFields(2024, 1, 1, 0, 0, sec); err == nil {
			t.Errorf("second %v accepted", sec)
		}
	}
}

func TestTimeStampFromRaw(t *testing.T) {
	v := loadVectors(t)
	for _, c := range v.FromRaw {
		checkFields(t, mustTID(t, c.RawHex), c.Fields, c.Str, c.TimeTime)
	}
}

func TestLaterThan(t *testing.T) {
	v := loadVectors(t)
	for _, c := range v.LaterThan {
		self, other := mustTID(t, c.SelfHex), mustTID(t, c.OtherHex)
		got := self.LaterThan(other)
		if hex.EncodeToString(got[:]) != c.ResultHex {
			t.Errorf("%s.LaterThan(%s) = %s, want %s (%s)", self, other, got, c.ResultHex, c.Note)
		}
		if (got == self) != c.ResultIsSelf {
			t.Errorf("%s.LaterThan(%s): is-self %v, want %v", self, other, got == self, c.ResultIsSelf)
		}
		if !other.Less(got) {
			t.Errorf("%s.LaterThan(%s) = %s is not above other", self, other, got)
		}
	}
}

func TestNewTID(t *testing.T) {
	v := loadVectors(t)
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	for _, c := range v.NewTid {
		old := mustTID(t, c.OldHex)
		got := NewTID(now, old)
		if c.ResultHex != nil {
			if hex.EncodeToString(got[:]) != *c.ResultHex {
				t.Errorf("NewTID(%s) = %s, want %s", old, got, *c.ResultHex)
			}
		} else if got != TIDFromTime(now) {
			t.Errorf("NewTID(%s) = %s, want now %s", old, got, TIDFromTime(now))
		}
	}
	// Strictly increasing even when the clock stands still or goes back.
	last := ZeroTID
	for i := 0; i < 1000; i++ {
		n := NewTID(now.Add(-time.Duration(i)*time.Millisecond), last)
		if !last.Less(n) {
			t.Fatalf("NewTID not increasing: %s after %s", n, last)
		}
		last = n
	}
}

func TestTimeRoundTrip(t *testing.T) {
	for _, s := range []string{"2024-01-01T00:00:00Z", "2024-01-01T12:30:15.5Z", "2015-01-04T14:15:26.713Z", "2024-02-29T23:59:59.999999Z"} {
		tm, _ := time.Parse(time.RFC3339Nano, s)
		tid := TIDFromTime(tm)
		back := tid.Time()
		if d := back.Sub(tm); d > 0 || d < -15*time.Nanosecond {
			t.Errorf("%s -> %s -> %s (diff %v)", s, tid, back, d)
		}
	}
	if got := TIDFromTime(time.Date(2024, 1, 1, 12, 30, 15, 500_000_000, time.UTC)); got.String() != "03f590ee42222222" {
		t.Errorf("2024-01-01 12:30:15.5 -> %s, want 03f590ee42222222", got)
	}
}

func TestClassName(t *testing.T) {
	for data, want := range map[string]string{
		"\x80\x03cpersistent.mapping\nPersistentMapping\nq\x00.\x80\x03}q\x01.": "persistent.mapping.PersistentMapping",
		"\x80\x03csampleapp.models\nNewArgsItem\nq\x00N\x86q\x01.":              "sampleapp.models.NewArgsItem",
		"(cBTrees.OOBTree\nOOBTree\nq\x01Ntq\x02.":                              "BTrees.OOBTree.OOBTree",
		"garbage": "", "": "", "\x80\x03cno-newline": "",
	} {
		if got := ClassName([]byte(data)); got != want {
			t.Errorf("ClassName(%q) = %q, want %q", data, got, want)
		}
	}
}

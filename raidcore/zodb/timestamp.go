package zodb

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"time"
)

// This file reproduces persistent's C TimeStamp (persistent/_timestamp.c)
// bit for bit: the 8 bytes of a tid are a big-endian uint32 counting minutes
// since 1900-01-01 00:00 UTC in a calendar where every month has 31 days,
// followed by a big-endian uint32 holding the seconds within that minute in
// units of 60/2^32 s.

// secondsUnit is SCONV of the C implementation: 60 / 2^16 / 2^16, exactly
// representable as a float64.
const secondsUnit = 60.0 / 65536.0 / 65536.0

// unixEpochFrom1900 is the offset between 1900-01-01 and 1970-01-01 in
// seconds, as used by TimeStamp.timeTime().
const unixEpochFrom1900 = 2208988800.0

var monthLength = [2][12]int{
	{31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31},
	{31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31},
}

func isLeap(year int) bool {
	return year%4 == 0 && (year%100 != 0 || year%400 == 0)
}

func daysInMonth(year, month int) int {
	l := 0
	if isLeap(year) {
		l = 1
	}
	return monthLength[l][month-1]
}

// TimeStampFields are the calendar fields of a tid.
type TimeStampFields struct {
	Year, Month, Day, Hour, Minute int
	// Second is the stored seconds value times 60/2^32, so 0 <= Second < 60.
	Second float64
}

// TIDFromFields builds a tid exactly like persistent's
// TimeStamp(year, month, day, hour, minute, second). It validates the fields
// with the C implementation's messages; the seconds are not range-checked
// by the C implementation, but a value outside [0, 60) would wrap around, so
// they are rejected here.
func TIDFromFields(year, month, day, hour, minute int, second float64) (TID, error) {
	var t TID
	if year < 1900 {
		return t, fmt.Errorf("year must be greater than 1900: %d", year)
	}
	if month < 1 || month > 12 {
		return t, fmt.Errorf("month must be between 1 and 12: %d", month)
	}
	if d := daysInMonth(year, month); day < 1 || day > d {
		return t, fmt.Errorf("day must be between 1 and %d: %d", d, day)
	}
	if hour < 0 || hour > 23 {
		return t, fmt.Errorf("hour must be between 0 and 23: %d", hour)
	}
	if minute < 0 || minute > 59 {
		return t, fmt.Errorf("min must be between 0 and 59: %d", minute)
	}
	if !(second >= 0 && second < 60) {
		return t, fmt.Errorf("second must be at least 0 and below 60: %v", second)
	}
	minutes := uint64(((year-1900)*12+month-1)*31+day-1)*24*60 + uint64(hour*60+minute)
	if minutes > math.MaxUint32 {
		return t, fmt.Errorf("year must be at most 9917: %d", year)
	}
	binary.BigEndian.PutUint32(t[:4], uint32(minutes))
	binary.BigEndian.PutUint32(t[4:], uint32(second/secondsUnit))
	return t, nil
}

// TIDFromTime returns the tid for the instant t (taken in UTC), like
// TimeStamp(*gmtime(t)[:5] + (t % 60,)) in Python.
func TIDFromTime(t time.Time) TID {
	u := t.UTC()
	sec := float64(u.Second()) + float64(u.Nanosecond())/1e9
	tid, err := TIDFromFields(u.Year(), int(u.Month()), u.Day(), u.Hour(), u.Minute(), sec)
	if err != nil {
		// Only years outside 1900..9917 get here.
		if u.Year() < 1900 {
			return ZeroTID
		}
		return TIDFromUint64(math.MaxUint64)
	}
	return tid
}

// Fields decodes the calendar fields of t. Raw values that were never made
// by TIDFromFields (say a day 31 in April) decode the way the C
// implementation decodes them.
func (t TID) Fields() TimeStampFields {
	v := binary.BigEndian.Uint32(t[:4])
	var f TimeStampFields
	f.Minute = int(v % 60)
	v /= 60
	f.Hour = int(v % 24)
	v /= 24
	f.Day = int(v%31) + 1
	v /= 31
	f.Month = int(v%12) + 1
	v /= 12
	f.Year = int(v) + 1900
	f.Second = float64(binary.BigEndian.Uint32(t[4:])) * secondsUnit
	return f
}

// daysSince1900 counts the days from 1900-01-01 to the given date, linear in
// day and month like the C implementation (so invalid dates extrapolate).
func daysSince1900(year, month, day int) int {
	before := func(y int) int { return y/4 - y/100 + y/400 }
	days := 365*(year-1900) + before(year-1) - before(1899)
	l := 0
	if isLeap(year) {
		l = 1
	}
	for m := 0; m < month-1; m++ {
		days += monthLength[l][m]
	}
	return days + day - 1
}

// TimeTime returns the tid as seconds since the Unix epoch, equal in IEEE
// double arithmetic to persistent's TimeStamp.timeTime().
func (t TID) TimeTime() float64 {
	f := t.Fields()
	d := float64(daysSince1900(f.Year, f.Month, f.Day))
	return (((d*24+float64(f.Hour))*60+float64(f.Minute))*60 + f.Second) - unixEpochFrom1900
}

// Time returns the tid as a time.Time in UTC (nanosecond precision).
func (t TID) Time() time.Time {
	f := t.Fields()
	units := uint64(binary.BigEndian.Uint32(t[4:]))
	// units * 60e9 / 2^32 nanoseconds, computed without float rounding.
	hi, lo := bits.Mul64(units, 60_000_000_000)
	ns := hi<<32 | lo>>32
	return time.Date(f.Year, time.Month(f.Month), f.Day, f.Hour, f.Minute, 0, 0, time.UTC).Add(time.Duration(ns))
}

// TimeStampString formats t like str(TimeStamp): "YYYY-MM-DD HH:MM:SS.ffffff".
func (t TID) TimeStampString() string {
	f := t.Fields()
	return fmt.Sprintf("%04d-%02d-%02d %02d:%02d:%09.6f", f.Year, f.Month, f.Day, f.Hour, f.Minute, f.Second)
}

// LaterThan returns t if t > other, otherwise the smallest timestamp after
// other: other plus one unit in the seconds word, or, when that word is
// saturated, the start of the next minute (with real month lengths and leap
// years). This is persistent's TimeStamp.laterThan.
func (t TID) LaterThan(other TID) TID {
	if other.Less(t) {
		return t
	}
	n := other
	for i := 7; i > 3; i-- {
		if n[i] == 0xff {
			n[i] = 0
			continue
		}
		n[i]++
		return n
	}
	f := other.Fields()
	if f.Minute >= 59 {
		f.Minute = 0
		if f.Hour >= 23 {
			f.Hour = 0
			if f.Day >= daysInMonth(f.Year, f.Month) {
				f.Day = 1
				if f.Month >= 12 {
					f.Month = 1
					f.Year++
				} else {
					f.Month++
				}
			} else {
				f.Day++
			}
		} else {
			f.Hour++
		}
	} else {
		f.Minute++
	}
	minutes := uint32(((f.Year-1900)*12+f.Month-1)*31+f.Day-1)*24*60 + uint32(f.Hour*60+f.Minute)
	var r TID
	binary.BigEndian.PutUint32(r[:4], minutes)
	return r
}

// NewTID returns the tid for now made later than last, like ZODB's
// utils.newTid(last): strictly greater than last even when the clock went
// backwards.
func NewTID(now time.Time, last TID) TID {
	return TIDFromTime(now).LaterThan(last)
}

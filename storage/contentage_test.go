package storage

import (
	"testing"
	"time"
)

// TestContentAgeNewest checks the compact time of a ContentAge: the
// latest time noted, to the nanosecond; the zero time when none is.
func TestContentAgeNewest(t *testing.T) {
	var a ContentAge
	if !a.Newest().IsZero() {
		t.Errorf("no time noted: %v", a.Newest())
	}
	a.note(time.Time{})
	if !a.Newest().IsZero() {
		t.Errorf("the zero time noted: %v", a.Newest())
	}
	t1 := time.Date(2026, 12, 2, 16, 0, 0, 123456789, time.UTC)
	t2 := t1.Add(time.Nanosecond)
	a.note(t2)
	a.note(t1)
	a.note(time.Time{})
	if got := a.Newest(); !got.Equal(t2) {
		t.Errorf("newest %v, want %v", got, t2)
	}
	for _, tm := range []time.Time{{}, t1, t1.In(time.FixedZone("x", 3600))} {
		if got := FromUnixNano(UnixNano(tm)); !got.Equal(tm) || got.IsZero() != tm.IsZero() {
			t.Errorf("FromUnixNano(UnixNano(%v)) = %v", tm, got)
		}
	}
}

package retryafter_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/retryafter"
)

func TestParse(t *testing.T) {
	now := time.Date(2030, time.January, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range []struct {
		h    string
		wait time.Duration
		ok   bool
	}{
		{"120", 2 * time.Minute, true},
		{" 0 ", 0, true},
		{"7200", time.Hour, true},                 // capped
		{"99999999999999999999", time.Hour, true}, // past int64: still seconds, capped
		{"9223372036854775807", time.Hour, true},  // past time.Duration's range: not wrapped
		{now.Add(30 * time.Second).Format(http.TimeFormat), 30 * time.Second, true},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0, true},
		{now.Add(2 * time.Hour).Format(http.TimeFormat), time.Hour, true},
		{"", 0, false},
		{"-5", 0, false},
		{"soon", 0, false},
	} {
		if wait, ok := retryafter.Parse(c.h, now, time.Hour); wait != c.wait || ok != c.ok {
			t.Errorf("Parse(%q) = %v, %v; want %v, %v", c.h, wait, ok, c.wait, c.ok)
		}
	}
}

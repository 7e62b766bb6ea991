package tests

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves goroutines behind: fills,
// background mirrors and readers must all end with the mirror.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The upstream fixture's distribution app never stops its
		// notification broadcaster; that is the fixture's, not ours.
		goleak.IgnoreTopFunction("github.com/docker/go-events.(*Broadcaster).run"))
}

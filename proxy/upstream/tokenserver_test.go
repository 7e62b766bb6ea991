package upstream

import (
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"github.com/google/go-containerregistry/pkg/authn"
)

// silentTokenServer is a registry at https://registry.test whose token
// server (its /token) never answers (a firewall dropping the packets to
// auth.docker.io while the registry answers); it counts the token
// requests.
type silentTokenServer struct{ logins *atomic.Int64 }

func (s silentTokenServer) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == "/token" {
		s.logins.Add(1)
		<-r.Context().Done()
		return nil, r.Context().Err()
	}
	h := http.Header{"Www-Authenticate": {`Bearer realm="https://registry.test/token",service="registry.test"`}}
	return &http.Response{StatusCode: http.StatusUnauthorized, Header: h, Body: http.NoBody, Request: r}, nil
}

// TestSilentTokenServerIsATimeoutForEveryRepository: with credentials not
// yet taken and a token server that does not answer, the repositories
// pulled at once whose login's turn never came (each waits for the one
// before it, the upstream's timeout each) failed with the handshake's
// own deadline, a bare context error the mirror answers 500 "internal
// error"; each fails as the first does, the token server not answering
// in time (a 504). On the bubble's clock.
func TestSilentTokenServerIsATimeoutForEveryRepository(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 6
		var logins atomic.Int64
		c := errClient(t, "https://registry.test", WithTransport(silentTokenServer{&logins}), WithAuth(&authn.Basic{Username: "bot", Password: "pw"}))
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				repo := fmt.Sprintf("team/app%d", i)
				_, err := c.HeadManifest(t.Context(), repo, v1)
				var ue *Error
				if !errors.As(err, &ue) || !errors.Is(err, ErrUnavailable) || !ue.Timeout {
					t.Errorf("%s: %v (%T), want an *Error of ErrUnavailable saying the token server did not answer in time", repo, err, err)
				}
			})
		}
		wg.Wait()
	})
}

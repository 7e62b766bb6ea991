// Package conformance runs the OCI distribution-spec conformance suite
// (github.com/opencontainers/distribution-spec/conformance, pinned in
// go.mod as a tool) against docker-mirror. The suite pushes its own content
// and reads it back; a routing front sends its writes to an in-process
// upstream registry and its reads through an in-process mirror (tag TTL 0),
// so every read check is a check of the proxy. The same suite also runs
// directly against a second upstream, as the baseline each failure is
// judged against.
//
// It runs only with CONFORMANCE=1; see docs/conformance.md.
package conformance

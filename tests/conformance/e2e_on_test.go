//go:build e2e

package conformance

// e2e is set by the e2e build tag, which the README's test command uses.
const e2e = true

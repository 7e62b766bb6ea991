//go:build e2e && !linux

package crash

import (
	"errors"
	"os/exec"
)

// dieWithParent is Linux-only (Pdeathsig).
func dieWithParent(*exec.Cmd) {}

// storeWatch needs inotify; elsewhere the rounds it would time are skipped.
type storeWatch struct{ fire chan struct{} }

func watchStore(string, int) (*storeWatch, error) { return nil, errors.ErrUnsupported }

func (w *storeWatch) Close() {}

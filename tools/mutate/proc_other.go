//go:build !unix

package main

import "os/exec"

// setProcessGroup does nothing here: cancelling cmd kills go alone.
func setProcessGroup(*exec.Cmd) {}

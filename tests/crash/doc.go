// Package crash runs the docker-mirror binary as a child process and kills
// it: with SIGKILL at moments chosen by download progress, checking that
// nothing partial or corrupt is ever served or kept and that interrupted
// background mirrors are resumed; and with SIGTERM during a download,
// checking the graceful shutdown. The tests need the e2e build tag:
//
//	go test -race -tags e2e ./tests/crash/ -v
package crash

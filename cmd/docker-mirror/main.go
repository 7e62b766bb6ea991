// Command docker-mirror is a pull-through caching registry proxy.
//
//	docker-mirror serve [flags]   run the proxy (default: a Docker Hub mirror on :5000, data in ./data)
//	docker-mirror mirror -d DEST[/PREFIX] IMAGE...   copy images into a registry
//	docker-mirror prefetch --server URL IMAGE...     ask a running proxy to prefetch
//	docker-mirror version         print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

const usage = `docker-mirror: a pull-through caching registry proxy.

Usage:
  docker-mirror serve [flags]   run the proxy (with no flags: a Docker Hub mirror on :5000, data in ./data)
  docker-mirror mirror -d DEST[/PREFIX] [flags] IMAGE...
                                copy images (every linux platform) into a registry, no server needed
  docker-mirror prefetch --server URL IMAGE...
                                ask a running proxy to mirror images ahead of time, and follow the job
` + adminUsage + `  docker-mirror version         print the version and the Go version
  docker-mirror help            show this help

Run 'docker-mirror COMMAND --help' for every option of a command.
`

func main() {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		// The first signal starts a graceful stop; a second one ends the
		// process at once (the signals' default), rather than leaving it
		// to wait out the shutdown timeout for clients that are not
		// reading.
		signal.Stop(sigs)
		cancel(interrupted{s})
	}()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	signal.Stop(sigs)
	os.Exit(code)
}

// interrupted is the cause of run's context once a signal (ctrl-C's
// SIGINT, SIGTERM) stopped the command.
type interrupted struct{ sig os.Signal }

func (i interrupted) Error() string { return i.sig.String() + " signal received" }

// signalled returns the exit status of a command a signal stopped (ctx's
// cause interrupted): 128 plus the signal's number, as a shell gives a
// program the signal ended (130 for ctrl-C), so that a script tells an
// interruption from a failure.
func signalled(ctx context.Context) (int, bool) {
	var i interrupted
	if !errors.As(context.Cause(ctx), &i) {
		return 0, false
	}
	if n, ok := i.sig.(syscall.Signal); ok {
		return 128 + int(n), true
	}
	return 1, true
}

// exitUsage is the exit status for a bad command line or configuration.
const exitUsage = 2

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd := args[0]
	if strings.HasPrefix(cmd, "-") {
		cmd, _, _ = strings.Cut(cmd, "=") // -d=DEST is -d DEST
	}
	switch cmd {
	case "serve":
		return serveCommand(ctx, args[1:], stdout, stderr)
	case "mirror":
		return mirrorCommand(ctx, args[1:], stdout, stderr)
	case "prefetch":
		return prefetchCommand(ctx, args[1:], stdout, stderr)
	case "gc":
		return gcCommand(ctx, args[1:], stdout, stderr)
	case "verify":
		return verifyCommand(ctx, args[1:], stdout, stderr)
	case "ls":
		return lsCommand(ctx, args[1:], stdout, stderr)
	case "version", "--version", "-version":
		if cmd == args[0] { // --version=X is unknown, below: it takes no value
			return versionCommand(args[1:], stdout, stderr)
		}
	case "help", "-h", "-help", "--help":
		if cmd != args[0] {
			break // --help=X is unknown, below: it takes no value
		}
		if len(args) > 1 {
			// As version: a script's mistake would go unseen.
			fmt.Fprintf(stderr, "docker-mirror help: unexpected argument %q (a command's options: docker-mirror COMMAND --help)\n", args[1])
			return exitUsage
		}
		fmt.Fprint(stdout, usage)
		return 0
	case "-d", "--d", "-destination", "--destination":
		// The original tool's form: docker-mirror -d DEST IMAGE...
		return mirrorCommand(ctx, args, stdout, stderr)
	}
	fmt.Fprintf(stderr, "docker-mirror: unknown command %q (try 'docker-mirror help')\n", args[0])
	return exitUsage
}

// parseFlags parses a command's flags: --help prints the usage to stdout
// (exit 0), a bad flag prints one line to stderr (exit 2).
func parseFlags(fs *flag.FlagSet, args []string, synopsis string, stdout, stderr io.Writer) (code int, ok bool) {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(stdout)
		fmt.Fprintf(stdout, "Usage: %s\n", synopsis)
		flags := false
		fs.VisitAll(func(*flag.Flag) { flags = true })
		if !flags {
			return 0, false // version takes none
		}
		fmt.Fprint(stdout, "\nFlags:\n")
		if fs.Name() == "serve" {
			fs.PrintDefaults()
		} else {
			printFlags(fs, "data") // the offline commands work on --data
		}
		return 0, false
	}
	if err != nil {
		fmt.Fprintf(stderr, "docker-mirror %s: %v\n", fs.Name(), err)
		return exitUsage, false
	}
	if msg, ok := boolValueApart(fs, args); ok {
		fmt.Fprintf(stderr, "docker-mirror %s: %s\n", fs.Name(), msg)
		return exitUsage, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "docker-mirror %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return exitUsage, false
	}
	return 0, true
}

// boolValueApart finds a boolean flag given its value as the next
// argument (--referrers false): the flag parser takes the flag alone as
// true and stops at the value, which would be taken for an argument (an
// image), the opposite of what was meant. args are the arguments fs
// parsed.
func boolValueApart(fs *flag.FlagSet, args []string) (string, bool) {
	rest := fs.Args()
	i := len(args) - len(rest) - 1 // the last argument the parser read
	if len(rest) == 0 || i < 0 || (rest[0] != "true" && rest[0] != "false") {
		return "", false
	}
	f := fs.Lookup(strings.TrimLeft(args[i], "-"))
	if f == nil || !strings.HasPrefix(args[i], "-") || strings.Contains(args[i], "=") {
		return "", false // a flag's value, or "--"
	}
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); !ok || !b.IsBoolFlag() {
		return "", false
	}
	return fmt.Sprintf("%s %s: a boolean flag takes its value after =: %s=%s", args[i], rest[0], args[i], rest[0]), true
}

// flagAmong returns the first of a command's arguments that is a flag:
// the flag parser stops at the first argument, so a flag after it would
// be taken for an image (no image reference starts with '-').
func flagAmong(args []string) (string, bool) {
	for _, a := range args {
		if len(a) > 1 && a[0] == '-' {
			return a, true
		}
	}
	return "", false
}

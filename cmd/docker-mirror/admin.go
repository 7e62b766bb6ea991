package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/server"
	"github.com/docker-mirror/docker-mirror/storage"
)

// The offline commands work on a stopped server's data directory (the
// index is exclusive: with the server running they fail at once, saying
// so). They read --data, --config and the storage settings as serve does.

// adminUsage is the part of the usage text about the offline commands.
const adminUsage = `  docker-mirror ls --data DIR [--json]
                                list the cached images: size, platforms, last pull, state, pinned
  docker-mirror gc --data DIR [--dry-run]
                                remove the blobs and manifests no cached image references
  docker-mirror verify --data DIR [--dry-run]
                                rehash all stored content; remove what is corrupt (exit 1 if any)
`

// errUsage marks errors that are the command line's fault (exit 2).
var errUsage = errors.New("usage")

// adminCommand parses an offline command's flags (extra adds its own) and
// resolves the configuration. ok is false when the command should exit
// with code.
func adminCommand(name, synopsis string, args []string, stdout, stderr io.Writer, extra func(*flag.FlagSet)) (cfg config.Config, code int, ok bool) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	flags := config.Bind(fs)
	if extra != nil {
		extra(fs)
	}
	if code, ok := parseFlags(fs, args, synopsis, stdout, stderr); !ok {
		return cfg, code, false
	}
	cfg, err := flags.Resolve(os.LookupEnv)
	if err != nil {
		fmt.Fprintf(stderr, "docker-mirror %s: %v\n", name, err)
		return cfg, exitUsage, false
	}
	return cfg, 0, true
}

// openData opens the index and the embedded store of a data directory.
// clean removes the leftovers of interrupted writes (gc, verify); ls
// changes nothing in the store.
func openData(ctx context.Context, cfg config.Config, clean bool) (*storage.DriverStore, *storage.Index, error) {
	if cfg.Destination.URL != "" {
		return nil, nil, fmt.Errorf("%w: %w", errUsage, lifecycle.ErrRegistryDestination)
	}
	path := server.IndexPath(cfg)
	if _, err := os.Stat(path); err != nil {
		return nil, nil, fmt.Errorf("%w: no index at %s: is --data the server's data directory? (%w)", errUsage, path, err)
	}
	index, err := storage.OpenIndex(path)
	if err != nil {
		if strings.Contains(err.Error(), "locked by another process") {
			err = fmt.Errorf("%w: stop the server using %s first", err, cfg.Data)
		}
		return nil, nil, err
	}
	store, err := server.OpenEmbeddedStore(ctx, cfg, clean)
	if err != nil {
		index.Close()
		return nil, nil, err
	}
	return store, index, nil
}

// adminError prints an offline command's error and returns its exit code.
func adminError(name string, err error, stderr io.Writer) int {
	msg := err.Error()
	code := 1
	if errors.Is(err, errUsage) {
		msg = strings.TrimPrefix(msg, errUsage.Error()+": ")
		code = exitUsage
	}
	fmt.Fprintf(stderr, "docker-mirror %s: %s\n", name, msg)
	return code
}

// adminLogger logs the lifecycle's details only at --log-level debug: the
// commands print what matters themselves.
func adminLogger(cfg config.Config, stderr io.Writer) *slog.Logger {
	if cfg.LogLevel == "debug" {
		return newLogger(cfg, stderr)
	}
	return slog.New(slog.DiscardHandler)
}

// withCollector opens a data directory, runs fn on a collector of it, and
// closes it.
func withCollector(ctx context.Context, cfg config.Config, clean bool, opts lifecycle.Options, fn func(*lifecycle.Collector, *storage.Index) error) error {
	if shared, err := withSharedCollector(ctx, cfg, opts, fn); shared {
		return err
	}
	store, index, err := openData(ctx, cfg, clean)
	if err != nil {
		return err
	}
	err = fn(lifecycle.New(store, index, opts), index)
	return errors.Join(err, index.Close())
}

// gcCommand removes unreferenced content offline:
// docker-mirror gc --data DIR [--dry-run].
func gcCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var dryRun bool
	var grace time.Duration
	cfg, code, ok := adminCommand("gc", "docker-mirror gc --data DIR [--dry-run] [--grace DURATION]", args, stdout, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&dryRun, "dry-run", false, "print what would be removed, and remove nothing")
		fs.DurationVar(&grace, "grace", 0, "keep content written less than this long ago")
	})
	if !ok {
		return code
	}
	var r lifecycle.Report
	var images int
	err := withCollector(ctx, cfg, !dryRun, lifecycle.Options{Grace: grace, DryRun: dryRun, Log: adminLogger(cfg, stderr)},
		func(c *lifecycle.Collector, _ *storage.Index) error {
			var err error
			if r, err = c.Collect(ctx); err != nil {
				return err
			}
			list, err := c.Images(ctx)
			images = len(list)
			return err
		})
	if err != nil {
		return adminError("gc", err, stderr)
	}
	verb := "removed"
	if dryRun {
		verb = "would remove"
	}
	fmt.Fprintf(stdout, "gc: %s %s and %s (%s); %d %s kept, %s stored\n", verb,
		plural(r.BlobsRemoved, "blob"), plural(r.ManifestsRemoved, "manifest"), humanBytes(r.BytesFreed),
		images, pluralWord(images, "image"), humanBytes(r.StoredAfter))
	return 0
}

// verifyCommand rehashes the stored content offline:
// docker-mirror verify --data DIR [--dry-run]. It exits 1 if any content
// was corrupt.
func verifyCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var dryRun bool
	cfg, code, ok := adminCommand("verify", "docker-mirror verify --data DIR [--dry-run]", args, stdout, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&dryRun, "dry-run", false, "report corrupt content, and remove nothing")
	})
	if !ok {
		return code
	}
	var r lifecycle.Report
	err := withCollector(ctx, cfg, !dryRun, lifecycle.Options{DryRun: dryRun, Log: adminLogger(cfg, stderr)},
		func(c *lifecycle.Collector, _ *storage.Index) error {
			var err error
			r, err = c.Verify(ctx)
			return err
		})
	for _, d := range r.Corrupt {
		fmt.Fprintf(stdout, "corrupt: %s\n", d)
	}
	if err != nil {
		return adminError("verify", err, stderr)
	}
	summary := fmt.Sprintf("verify: checked %s and %s (%s): %d corrupt", plural(r.BlobsChecked, "blob"),
		plural(r.ManifestsChecked, "manifest"), humanBytes(r.BytesChecked), r.CorruptFound())
	if r.Missing > 0 {
		summary += fmt.Sprintf(", %d indexed but missing", r.Missing)
	}
	switch {
	case r.CorruptFound()+r.Missing == 0:
	case dryRun:
		summary += " (dry run: nothing removed)"
	default:
		summary += "; removed with their index entries, the next pull fetches them again"
	}
	fmt.Fprintln(stdout, summary)
	if r.CorruptFound() > 0 {
		return 1
	}
	return 0
}

// lsCommand lists the cached images: docker-mirror ls --data DIR [--json].
func lsCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var asJSON bool
	cfg, code, ok := adminCommand("ls", "docker-mirror ls --data DIR [--json]", args, stdout, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&asJSON, "json", false, "print JSON")
	})
	if !ok {
		return code
	}
	var images []lifecycle.Image
	var stored int64
	err := withCollector(ctx, cfg, false, lifecycle.Options{Log: adminLogger(cfg, stderr)},
		func(c *lifecycle.Collector, index *storage.Index) error {
			var err error
			images, err = c.Images(ctx)
			stored = index.StoredBytes()
			return err
		})
	if err != nil {
		return adminError("ls", err, stderr)
	}
	if asJSON {
		out := struct {
			Images      []lifecycle.Image `json:"images"`
			StoredBytes int64             `json:"stored_bytes"`
		}{images, stored}
		if out.Images == nil {
			out.Images = []lifecycle.Image{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return adminError("ls", err, stderr)
		}
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tDIGEST\tPLATFORMS\tSIZE\tLAST PULL\tSTATE\tPINNED")
	for _, im := range images {
		tags := "<none>"
		if len(im.Tags) > 0 {
			tags = strings.Join(im.Tags, ",")
		}
		fmt.Fprintf(tw, "%s:%s\t%s\t%s\t%s\t%s\t%s\t%s\n", im.Name(), tags, shortDigest(im.Digest.String()),
			orDash(strings.Join(im.Platforms, ",")), humanBytes(im.Size), lastPull(im.LastPull), orDash(im.State), yesDash(im.Pinned))
	}
	if err := tw.Flush(); err != nil {
		return adminError("ls", err, stderr)
	}
	fmt.Fprintf(stdout, "%d %s, %s stored\n", len(images), pluralWord(len(images), "image"), humanBytes(stored))
	return 0
}

func shortDigest(d string) string {
	if alg, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
		return alg + ":" + hex[:12]
	}
	return d
}

func lastPull(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesDash(b bool) string {
	if b {
		return "yes"
	}
	return "-"
}

func pluralWord(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

func plural(n int, word string) string { return fmt.Sprintf("%d %s", n, pluralWord(n, word)) }

// humanBytes formats a size in binary units, e.g. 1.5 GiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

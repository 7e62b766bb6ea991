package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/redact"
	"github.com/docker-mirror/docker-mirror/server"
	"github.com/docker-mirror/docker-mirror/storage"
)

// The offline commands work on a stopped server's data directory (the
// index is exclusive: with the server running they fail at once, saying
// so). They read --data, --config and the storage settings as serve does,
// and apply memory_limit and pass_gc_percent to their passes.

// adminUsage is the part of the usage text about the offline commands.
const adminUsage = `  docker-mirror ls --data DIR [--json]
                                list the cached images: size, platforms, last pull, state, pinned
  docker-mirror gc --data DIR [--dry-run] [--grace DURATION]
                                remove the blobs and manifests no cached image references
  docker-mirror verify --data DIR [--destination URL] [--repair]
                                rehash all stored content, report what is corrupt or missing (exit 1 if any);
                                --repair removes it
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
	if f, ok := serveOnlySet(fs, "data"); ok {
		fmt.Fprintf(stderr, "docker-mirror %s: --%s: only serve takes it (%s works on a stopped server's --data); leave it out\n", name, f, name)
		return cfg, exitUsage, false
	}
	cfg, err := flags.Resolve(os.LookupEnv)
	if err == nil {
		err = cfg.CheckEnvironment(os.Environ(), prefetchPasswordEnv)
	}
	if err != nil {
		fmt.Fprintf(stderr, "docker-mirror %s: %v\n", name, err)
		return cfg, exitUsage, false
	}
	applyMemoryLimit(cfg) // the passes build the heap a server's do
	return cfg, 0, true
}

// openIndex opens the index of a data directory and checks that it
// describes the store cfg names (the index records it): if it does not,
// it refuses with one line naming the flag to pass, so that no command
// judges an index against a store it does not describe.
func openIndex(cfg config.Config, cmd string) (*storage.Index, storage.StoreIdentity, error) {
	path := server.IndexPath(cfg)
	fi, err := os.Stat(path)
	if err != nil {
		return nil, storage.StoreIdentity{}, fmt.Errorf("%w: no index at %s: is --data the server's data directory? (%w)", errUsage, path, err)
	}
	if fi.Size() == 0 {
		// Lost (a disk that filled as it was made): opened, it would be a
		// new empty index, and gc would take every stored file for
		// unreferenced and remove it.
		return nil, storage.StoreIdentity{}, fmt.Errorf("%w: the index %s is empty (0 bytes): the store's content is unknown to it; restore it from a backup", errUsage, path)
	}
	index, err := storage.OpenIndex(path)
	if err != nil {
		if strings.Contains(err.Error(), "locked by another process") {
			err = fmt.Errorf("%w: stop the server using %s first", err, cfg.Data)
		}
		return nil, storage.StoreIdentity{}, err
	}
	id, err := index.Store()
	if err != nil {
		index.Close()
		return nil, id, err
	}
	if want := server.StoreIdentity(cfg); id.Known() && !sameStore(id, want) {
		index.Close()
		return nil, id, fmt.Errorf("%w: %s", errUsage, mismatch(cmd, cfg.Data, id, want))
	}
	return index, id, nil
}

// sameStore reports whether two identities name the same store; a
// registry's URL is compared without its scheme.
func sameStore(a, b storage.StoreIdentity) bool {
	if a.Kind == storage.KindRegistry && b.Kind == storage.KindRegistry {
		trim := func(s string) string {
			s = strings.TrimPrefix(strings.TrimPrefix(s, "https://"), "http://")
			return strings.TrimRight(s, "/")
		}
		return trim(a.Location) == trim(b.Location)
	}
	return a == b
}

// mismatch says why an index does not go with the store the command
// line names, and which flag to pass.
func mismatch(cmd, dir string, id, want storage.StoreIdentity) string {
	switch {
	case id.Kind == storage.KindRegistry && cmd != "verify":
		return fmt.Sprintf("the index in %s belongs to %s: %s works on the embedded store only (check the registry with verify --destination %s; it manages its own storage)", dir, id, cmd, id.Location)
	case id.Kind == storage.KindRegistry:
		return fmt.Sprintf("the index in %s belongs to %s, not to %s: pass --destination %s", dir, id, want, id.Location)
	case want.Kind == storage.KindRegistry:
		return fmt.Sprintf("the index in %s belongs to %s, not to a destination registry: drop --destination", dir, id)
	default:
		return fmt.Sprintf("the index in %s belongs to %s, not to %s: pass the storage settings it was served with (--config FILE with its storage block)", dir, id, want)
	}
}

// openData opens the index and the embedded store of a data directory.
// clean removes the leftovers of interrupted writes (gc, verify --repair);
// ls changes nothing in the store. It refuses a destination registry's
// data directory, and an index that does not record its store (written by
// an older version) if the store holds none of what it names.
func openData(ctx context.Context, cfg config.Config, cmd string, clean bool) (*storage.DriverStore, *storage.Index, error) {
	if cfg.Destination.URL != "" {
		return nil, nil, fmt.Errorf("%w: %w", errUsage, lifecycle.ErrRegistryDestination)
	}
	index, id, err := openIndex(cfg, cmd)
	if err != nil {
		return nil, nil, err
	}
	store, err := server.OpenEmbeddedStore(ctx, cfg, clean)
	if err == nil && !id.Known() {
		err = holdsSome(ctx, cfg, store, index)
	}
	if err != nil {
		index.Close()
		return nil, nil, err
	}
	return store, index, nil
}

// holdsSome checks that an index that does not record its store names
// content the store holds (one digest is enough): an index of a
// destination registry's data directory names none of it.
func holdsSome(ctx context.Context, cfg config.Config, store storage.Store, index *storage.Index) error {
	recs, err := index.ReadImageTable(nil, nil)
	if err != nil {
		return err
	}
	content := recs.Content
	n := 0 // the manifest and blob records
	for id := range content.Len() {
		info := content.Info(id)
		if !info.Manifest && !info.Blob {
			continue // a last pull only
		}
		n += b2i(info.Manifest) + b2i(info.Blob)
		if _, err := store.Stat(ctx, "", content.Digest(id)); err == nil {
			return nil
		} else if !errors.Is(err, storage.ErrNotFound) {
			return err
		}
	}
	if n == 0 {
		return nil
	}
	return fmt.Errorf("%w: the index in %s does not record its store (an older version wrote it) and the embedded store holds none of the %d digests it names: "+
		"if it is a --destination server's, pass --destination URL; if the store was lost, remove %s", errUsage, cfg.Data, n, server.IndexPath(cfg))
}

// b2i is 1 for true.
func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// adminError prints an offline command's error and returns its exit code:
// a command a signal (ctrl-C) stopped says it was interrupted and exits
// as mirror does (130), not with the "context canceled" it failed with.
func adminError(ctx context.Context, name string, err error, stderr io.Writer) int {
	if code, ok := signalled(ctx); ok {
		fmt.Fprintf(stderr, "docker-mirror %s: interrupted (%v)\n", name, context.Cause(ctx))
		return code
	}
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
// closes it. A damaged page of the index fn comes upon is its error.
func withCollector(ctx context.Context, cfg config.Config, cmd string, clean bool, opts lifecycle.Options, fn func(*lifecycle.Collector, *storage.Index) error) (err error) {
	if shared, err := withSharedCollector(ctx, cfg, opts, fn); shared {
		return err
	}
	store, index, err := openData(ctx, cfg, cmd, clean)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, index.Close()) }()
	defer index.RecoverDamaged(&err)
	return fn(lifecycle.New(store, index, opts), index)
}

// gcCommand removes unreferenced content offline:
// docker-mirror gc --data DIR [--dry-run].
func gcCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var dryRun bool
	var grace time.Duration
	cfg, code, ok := adminCommand("gc", "docker-mirror gc --data DIR [--dry-run] [--grace DURATION]", args, stdout, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&dryRun, "dry-run", false, "print what would be removed, and remove nothing")
		fs.Func("grace", "keep unreferenced content written or accessed less than this long ago, a `duration` such as 1h (default 0: remove it all)", func(v string) error {
			d, err := time.ParseDuration(v)
			switch {
			case err != nil:
				return errors.New("want a duration such as 1h")
			case d < 0:
				// Taken as 0, it would remove what it was meant to keep.
				return errors.New("must not be negative")
			}
			grace = d
			return nil
		})
	})
	if !ok {
		return code
	}
	var r lifecycle.Report
	var images int
	err := withCollector(ctx, cfg, "gc", !dryRun, lifecycle.Options{Grace: grace, DryRun: dryRun, Log: adminLogger(cfg, stderr), GCHold: passGCHold(cfg)},
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
		return adminError(ctx, "gc", err, stderr)
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

// verifyCommand checks the stored content offline:
// docker-mirror verify --data DIR [--repair]. It reports content that is
// corrupt (embedded store) or missing, removes it with its index entries
// only with --repair, and exits 1 if it found any.
func verifyCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var repair, dryRun bool
	cfg, code, ok := adminCommand("verify", "docker-mirror verify --data DIR [--destination URL] [--repair]", args, stdout, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&repair, "repair", false, "remove what is corrupt or missing, with its index entries (the next pull fetches it again)")
		fs.BoolVar(&dryRun, "dry-run", false, "report only (the default; overrides --repair)")
	})
	if !ok {
		return code
	}
	repair = repair && !dryRun
	if cfg.Destination.URL != "" {
		return verifyDestination(ctx, cfg, repair, stdout, stderr)
	}
	var r lifecycle.Report
	err := withCollector(ctx, cfg, "verify", repair, lifecycle.Options{DryRun: !repair, Log: adminLogger(cfg, stderr), GCHold: passGCHold(cfg)},
		func(c *lifecycle.Collector, _ *storage.Index) error {
			var err error
			r, err = c.Verify(ctx)
			return err
		})
	for _, u := range r.UnreadableRecords {
		fmt.Fprintf(stdout, "unreadable record: %s\n", u)
	}
	for _, d := range r.Corrupt {
		fmt.Fprintf(stdout, "corrupt: %s\n", d)
	}
	for _, d := range r.MissingContent {
		fmt.Fprintf(stdout, "missing: %s\n", d)
	}
	if err != nil {
		return adminError(ctx, "verify", err, stderr)
	}
	if n := len(r.UnreadableRecords); n > 0 && !repair {
		// Nothing else could be read past them.
		fmt.Fprintf(stdout, "verify: %d unreadable index records; the content is checked once they are dropped (nothing removed: run with --repair to drop them)\n", n)
		return 1
	}
	summary := fmt.Sprintf("verify: checked %s and %s (%s): %d corrupt", plural(r.BlobsChecked, "blob"),
		plural(r.ManifestsChecked, "manifest"), humanBytes(r.BytesChecked), r.CorruptFound())
	if r.Missing > 0 {
		summary += fmt.Sprintf(", %d indexed but missing", r.Missing)
	}
	if n := len(r.UnreadableRecords); n > 0 {
		summary += fmt.Sprintf(", %d unreadable index records dropped", n)
	}
	findings := r.CorruptFound() + r.Missing + len(r.UnreadableRecords)
	fmt.Fprintln(stdout, summary+findingsNote(findings, repair))
	if findings > 0 {
		return 1
	}
	return 0
}

// findingsNote ends verify's summary: what was done about the findings.
func findingsNote(findings int, repair bool) string {
	switch {
	case findings == 0:
		return ""
	case repair:
		return "; removed with their index entries, the next pull fetches them again"
	default:
		return " (nothing removed: run with --repair to remove them with their index entries)"
	}
}

// verifyDestination checks that the destination registry holds what the
// index of its data directory names: each manifest and blob in a
// repository the index links it to. Manifests still waiting in the index
// to be pushed are not asked for. With repair, the entries of what is
// missing are removed from the index (tags naming it with them), and the
// images mirrored completely in the repositories that held it go back to
// partial, so the next pull fetches it again; nothing is removed from the
// registry.
func verifyDestination(ctx context.Context, cfg config.Config, repair bool, stdout, stderr io.Writer) int {
	index, _, err := openIndex(cfg, "verify")
	if err != nil {
		return adminError(ctx, "verify", err, stderr)
	}
	defer index.Close()
	store, name, err := server.OpenStore(ctx, cfg, index)
	if err != nil {
		return adminError(ctx, "verify", err, stderr)
	}
	if err := index.SetStore(server.StoreIdentity(cfg)); err != nil { // checked against it: an older index learns its store
		return adminError(ctx, "verify", err, stderr)
	}
	// The records without tags or links (the offline index does not
	// change meanwhile); each digest's holders are read when checked.
	recs, err := index.ReadImageTable(nil, nil)
	if err != nil {
		return adminError(ctx, "verify", err, stderr)
	}
	var manifestDigests, blobDigests []digest.Digest // a digest with both records is a manifest
	for id := range recs.Content.Len() {
		switch info := recs.Content.Info(id); {
		case info.Manifest:
			manifestDigests = append(manifestDigests, recs.Content.Digest(id))
		case info.Blob:
			blobDigests = append(blobDigests, recs.Content.Digest(id))
		}
	}
	slices.Sort(manifestDigests) // the table orders canonical sha256 digests first
	slices.Sort(blobDigests)
	ms, _ := store.(storage.ManifestStore)
	var missing []digest.Digest
	lostRepos := map[string]bool{} // "host/repo" that held something missing
	var blobs, manifests, unlinked int
	check := func(d digest.Digest, manifest bool) error {
		if manifest {
			if _, pending, err := index.ManifestBody(d); err != nil || pending {
				return err
			}
		}
		repos, err := index.Holders(d)
		if err != nil {
			return err
		}
		if len(repos) == 0 {
			unlinked++
			return nil
		}
		for _, hr := range repos {
			host, repo, _ := strings.Cut(hr, "/")
			var err error
			if manifest && ms != nil {
				_, err = ms.Manifest(ctx, proxy.StoreRepo(host, repo), d)
			} else {
				_, err = store.Stat(ctx, proxy.StoreRepo(host, repo), d)
			}
			if err == nil {
				return nil
			}
			if !errors.Is(err, storage.ErrNotFound) {
				return err
			}
		}
		missing = append(missing, d)
		for _, hr := range repos {
			lostRepos[hr] = true
		}
		return nil
	}
	for _, d := range manifestDigests {
		manifests++
		if err := check(d, true); err != nil {
			return adminError(ctx, "verify", err, stderr)
		}
	}
	for _, d := range blobDigests {
		blobs++
		if err := check(d, false); err != nil {
			return adminError(ctx, "verify", err, stderr)
		}
	}
	for _, d := range missing {
		fmt.Fprintf(stdout, "missing: %s\n", d)
	}
	if repair && len(missing) > 0 {
		// The images that lose content go back to partial first, as
		// the embedded store's repair does: a complete one is never
		// mirrored again. Which image (or signature, or attestation of
		// it) lists the content would take reading every manifest from
		// the registry; the images of the repositories that held it are
		// all reset, and mirroring again one that lost nothing costs a
		// HEAD per blob.
		for _, f := range recs.Fills {
			if f.State != storage.FillComplete || !lostRepos[f.Upstream+"/"+f.Repo] {
				continue
			}
			f.State, f.UpdatedAt = storage.FillPartial, time.Now()
			if err := index.PutFill(f.Digest, f.FillRecord); err != nil {
				return adminError(ctx, "verify", err, stderr)
			}
		}
		if _, err := index.Forget(missing, nil); err != nil {
			return adminError(ctx, "verify", err, stderr)
		}
	}
	summary := fmt.Sprintf("verify: checked %s and %s in %s: %d indexed but missing", plural(blobs, "blob"), plural(manifests, "manifest"), name, len(missing))
	if unlinked > 0 {
		summary += fmt.Sprintf(" (%d not linked to any repository, not checked)", unlinked)
	}
	fmt.Fprintln(stdout, summary+findingsNote(len(missing), repair))
	if len(missing) > 0 {
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
	var list *lifecycle.ImageList
	var stored int64
	err := withCollector(ctx, cfg, "ls", false, lifecycle.Options{Log: adminLogger(cfg, stderr), GCHold: passGCHold(cfg)},
		func(c *lifecycle.Collector, index *storage.Index) error {
			var err error
			list, err = c.ListImages(ctx)
			stored = index.StoredBytes()
			return err
		})
	if err != nil {
		return adminError(ctx, "ls", err, stderr)
	}
	write := writeImageTable
	if asJSON {
		write = writeImagesJSON
	}
	if err := write(stdout, list.Len(), list.Each, stored); err != nil {
		return adminError(ctx, "ls", err, stderr)
	}
	return 0
}

// eachImage calls a function with every image in order (ImageList.Each).
type eachImage func(func(lifecycle.Image) error) error

// writeImagesJSON writes the images and the bytes stored as one JSON
// object indented by two spaces, as a json.Encoder of the whole list
// would, one image at a time: at 100k images the encoder's buffer of the
// whole list was ~50 MiB.
func writeImagesJSON(w io.Writer, n int, each eachImage, stored int64) error {
	bw := bufio.NewWriter(w)
	bw.WriteString("{\n  \"images\": [")
	sep := "\n    "
	err := each(func(im lifecycle.Image) error {
		raw, err := json.MarshalIndent(im, "    ", "  ")
		if err != nil {
			return err
		}
		bw.WriteString(sep)
		sep = ",\n    "
		_, err = bw.Write(raw)
		return err
	})
	if err != nil {
		return err
	}
	if n > 0 {
		bw.WriteString("\n  ")
	}
	fmt.Fprintf(bw, "],\n  \"stored_bytes\": %d\n}\n", stored)
	return bw.Flush()
}

// lsRow is an image's line of the table.
func lsRow(im lifecycle.Image) []string {
	tags := "<none>"
	if len(im.Tags) > 0 {
		tags = strings.Join(im.Tags, ",")
	}
	return []string{im.Name() + ":" + tags, shortDigest(im.Digest.String()), orDash(redact.Printable(strings.Join(im.Platforms, ","))),
		humanBytes(im.Size), lastPull(im.LastPull), orDash(im.State), yesDash(im.Pinned)}
}

// lsPadding is the spaces between the table's columns.
const lsPadding = 2

// writeImageTable writes the images as a table, then a line of totals:
// the columns aligned as a text/tabwriter would (the widest cell plus
// two spaces, widths in runes), in two passes over the images: a
// tabwriter holds every line until the end (~30 MiB at 100k images).
func writeImageTable(w io.Writer, n int, each eachImage, stored int64) error {
	header := []string{"IMAGE", "DIGEST", "PLATFORMS", "SIZE", "LAST PULL", "STATE", "PINNED"}
	widths := make([]int, len(header)-1)
	measure := func(cells []string) {
		for i := range widths {
			widths[i] = max(widths[i], utf8.RuneCountInString(cells[i])+lsPadding)
		}
	}
	measure(header)
	if err := each(func(im lifecycle.Image) error {
		measure(lsRow(im))
		return nil
	}); err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
	line := func(cells []string) {
		for i, c := range cells {
			bw.WriteString(c)
			if i < len(widths) {
				bw.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c)))
			}
		}
		bw.WriteByte('\n')
	}
	line(header)
	if err := each(func(im lifecycle.Image) error {
		line(lsRow(im))
		return nil
	}); err != nil {
		return err
	}
	fmt.Fprintf(bw, "%d %s, %s stored\n", n, pluralWord(n, "image"), humanBytes(stored))
	return bw.Flush()
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

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/server"
)

// mirrorCommand copies images with every linux platform (or --platform)
// straight from their upstream into a destination registry, with no
// server: docker-mirror mirror -d DEST[/PREFIX] IMAGE...
func mirrorCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mirror", flag.ContinueOnError)
	flags := config.Bind(fs)
	fs.Func("d", "shorthand for --destination", func(v string) error { return fs.Set("destination", v) })
	allTags := fs.Bool("all-tags", false, "copy every tag of each image's repository")
	dryRun := fs.Bool("dry-run", false, "print what would be copied, and copy nothing")
	jobs := fs.Int("jobs", defaultJobs, "images copied at the same time")
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(stdout)
		fmt.Fprint(stdout, "Usage: docker-mirror mirror -d DEST[/PREFIX] [flags] IMAGE...\n\n"+
			"Copies each image (every linux platform by default) from its upstream into DEST:\n"+
			"hello-world -> DEST/PREFIX/library/hello-world, ghcr.io/o/app -> DEST/PREFIX/ghcr.io/o/app.\n"+
			"http://HOST:PORT/PREFIX means a plain-HTTP destination. The password comes from\n"+
			"DOCKER_MIRROR_DESTINATION_PASSWORD or the config file, the username (needed with\n"+
			"it) from the config file: destination: {username: NAME}.\n\nFlags:\n")
		printFlags(fs)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "docker-mirror mirror: %v\n", err)
		return exitUsage
	}
	if msg, ok := boolValueApart(fs, args); ok {
		fmt.Fprintf(stderr, "docker-mirror mirror: %s\n", msg)
		return exitUsage
	}
	if f, ok := serveOnlySet(fs); ok {
		fmt.Fprintf(stderr, "docker-mirror mirror: --%s: only serve takes it (mirror runs no server and keeps no store); leave it out\n", f)
		return exitUsage
	}
	images := fs.Args()
	if f, ok := flagAmong(images); ok {
		fmt.Fprintf(stderr, "docker-mirror mirror: flag %q after the images: give the flags before IMAGE...\n", f)
		return exitUsage
	}
	cfg, err := flags.Resolve(os.LookupEnv)
	if err == nil {
		err = cfg.CheckEnvironment(os.Environ(), prefetchPasswordEnv)
	}
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "docker-mirror mirror: %v\n", err)
		return exitUsage
	case cfg.Destination.URL == "":
		fmt.Fprintln(stderr, "docker-mirror mirror: no destination: give -d DEST[/PREFIX]")
		return exitUsage
	case len(images) == 0:
		fmt.Fprintln(stderr, "docker-mirror mirror: no images to copy")
		return exitUsage
	case *jobs < 1:
		fmt.Fprintf(stderr, "docker-mirror mirror: --jobs: invalid value %d (want 1 or more)\n", *jobs)
		return exitUsage
	}
	applyMemoryLimit(cfg) // a copy of many images builds the heap a server's fills do
	var d display
	logOut := stderr
	if !*dryRun {
		// Log lines (warnings of the copy engine) must not land inside
		// the progress bars.
		d = newDisplay(stdout)
		logOut = d.logTo(stderr)
	}
	logCfg := cfg
	if logCfg.LogLevel == "info" {
		logCfg.LogLevel = "warn" // the default: the display says what info lines would; the format stays
	}
	log := newLogger(logCfg, logOut)
	failed, err := mirrorImages(ctx, cfg, log, images, mirrorOptions{allTags: *allTags, jobs: *jobs, display: d}, stdout)
	if code, ok := signalled(ctx); ok {
		// Not each image's "context canceled": what was copied stays,
		// and a run again copies only the rest.
		fmt.Fprintf(stderr, "docker-mirror mirror: interrupted (%v)\n", context.Cause(ctx))
		return code
	}
	if err != nil {
		fmt.Fprintf(stderr, "docker-mirror mirror: %v\n", err)
		return 1
	}
	if len(failed) > 0 {
		fmt.Fprintf(stderr, "docker-mirror mirror: failed: %s\n", strings.Join(failed, ", "))
		return 1
	}
	return 0
}

// serveOnly are the flags only a server uses (mirror and the offline
// commands bind every flag of serve). Given to another command they were
// silently ignored; in a config file it shares with serve they are left
// alone.
var serveOnly = []string{"listen", "data", "max-size", "evict-after", "tls-cert", "tls-key",
	"shutdown-timeout", "header-timeout", "readyz-fail-when-full", "prefetch-max-images",
	"cluster-self", "cluster-peer", "cluster-peers-dns", "cluster-secret-file"}

// serveOnlySet returns the first serve-only flag set on the command line,
// but for those the command takes (except).
func serveOnlySet(fs *flag.FlagSet, except ...string) (string, bool) {
	var set string
	fs.Visit(func(f *flag.Flag) {
		if set == "" && slices.Contains(serveOnly, f.Name) && !slices.Contains(except, f.Name) {
			set = f.Name
		}
	})
	return set, set != ""
}

// printFlags prints the help of fs's flags but those only serve takes
// (serveOnly, but for except), which the command refuses.
func printFlags(fs *flag.FlagSet, except ...string) {
	shown := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	shown.SetOutput(fs.Output())
	fs.VisitAll(func(f *flag.Flag) {
		if !slices.Contains(serveOnly, f.Name) || slices.Contains(except, f.Name) {
			shown.Var(f.Value, f.Name, f.Usage)
			shown.Lookup(f.Name).DefValue = f.DefValue
		}
	})
	shown.PrintDefaults()
}

// defaultJobs is how many images mirror copies at the same time. Each
// copy's fetches share the --concurrency limit; more images at once keep
// the upstream and the destination busy while one image waits on a
// manifest or a small layer.
const defaultJobs = 4

// mirrorOptions are the mirror command's own settings.
type mirrorOptions struct {
	allTags bool
	// jobs bounds the images copied at the same time.
	jobs int
	// display shows the copies; nil means a dry run: print the plans.
	display display
}

// mirrorImages runs the proxy's copy engine without a server, on a
// throwaway index, and returns the images that failed, in the order given.
func mirrorImages(ctx context.Context, cfg config.Config, log *slog.Logger, images []string, o mirrorOptions, out io.Writer) ([]string, error) {
	if o.display != nil {
		defer o.display.wait()
	}
	tmp, remove, err := scratchDir("docker-mirror-")
	if err != nil {
		return nil, err
	}
	defer remove()
	cfg.Data = tmp
	// No server: what only a server uses (its certificate, its clients'
	// htpasswd file, its sync, its cluster's peers) is neither read nor run.
	cfg.TLSCert, cfg.TLSKey = "", ""
	cfg.Auth, cfg.Sync, cfg.Cluster = config.Auth{}, config.Sync{}, config.Cluster{}
	// Manifests the destination holds from an earlier run are read back
	// from it, not fetched again: each GET counts as a Docker Hub pull.
	srv, err := server.New(ctx, cfg, server.WithLogger(log), server.WithProxyOptions(proxy.WithManifestsFromStore()))
	if err != nil {
		return nil, err
	}
	defer srv.Close()
	p := srv.Proxy

	var failed []string
	var refs []string
	for _, im := range images {
		if !o.allTags {
			refs = append(refs, im)
			continue
		}
		tags, err := p.ExpandTags(ctx, repository(im)+":*")
		if err != nil {
			fmt.Fprintf(out, "%s: listing tags: %v\n", im, err)
			failed = append(failed, im)
			continue
		}
		refs = append(refs, tags...)
	}
	if o.display == nil {
		for _, ref := range refs {
			if err := printPlan(ctx, p, ref, out); err != nil {
				fmt.Fprintf(out, "%s: %v\n", ref, err)
				failed = append(failed, ref)
			}
		}
		return failed, nil
	}
	d := o.display
	errs := make([]error, len(refs))
	var g errgroup.Group
	g.SetLimit(o.jobs)
	for i, ref := range refs {
		g.Go(func() error {
			got, err := p.Copy(ctx, ref, nil, func(pr proxy.Progress) { d.update(ref, pr) })
			if err != nil && ctx.Err() != nil {
				err = ctx.Err() // interrupted, whatever it cut short; shown as such
			}
			d.done(ref, got, err)
			errs[i] = err
			return nil // one image's failure does not stop the others
		})
	}
	_ = g.Wait()
	for i, err := range errs {
		if err != nil {
			failed = append(failed, refs[i])
		}
	}
	return failed, nil
}

// repository is an image reference without its digest and tag:
// "nginx:1.27@sha256:..." is "nginx" (the digest's own colon is no tag's),
// "localhost:5000/app:1" is "localhost:5000/app".
func repository(im string) string {
	name, _, _ := strings.Cut(im, "@")
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		name = name[:i]
	}
	return name
}

func printPlan(ctx context.Context, p *proxy.Proxy, ref string, out io.Writer) error {
	plan, err := p.Plan(ctx, ref, nil)
	if err != nil {
		return err
	}
	var copyBytes, haveBytes int64
	var copyN, haveN int
	for _, b := range plan.Blobs {
		if b.Stored {
			haveBytes += b.Size
			haveN++
		} else {
			copyBytes += b.Size
			copyN++
		}
	}
	platforms := strings.Join(plan.Platforms, ", ")
	if platforms == "" {
		platforms = "single image"
	}
	fmt.Fprintf(out, "%s: %s (%s): %d manifests; would copy %d blobs (%s); %d blobs (%s) already there\n",
		ref, plan.Digest, platforms, plan.Manifests, copyN, size(copyBytes), haveN, size(haveBytes))
	return nil
}

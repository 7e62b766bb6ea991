package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lifecycle"
)

// lsBuffered is how ls wrote before it streamed: a json.Encoder of the
// whole list, or a tabwriter flushed at the end (the test's oracle).
func lsBuffered(images []lifecycle.Image, stored int64, asJSON bool) string {
	var b bytes.Buffer
	if asJSON {
		out := struct {
			Images      []lifecycle.Image `json:"images"`
			StoredBytes int64             `json:"stored_bytes"`
		}{images, stored}
		if out.Images == nil {
			out.Images = []lifecycle.Image{}
		}
		enc := json.NewEncoder(&b)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			panic(err)
		}
		return b.String()
	}
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tDIGEST\tPLATFORMS\tSIZE\tLAST PULL\tSTATE\tPINNED")
	for _, im := range images {
		tags := "<none>"
		if len(im.Tags) > 0 {
			tags = strings.Join(im.Tags, ",")
		}
		fmt.Fprintf(tw, "%s:%s\t%s\t%s\t%s\t%s\t%s\t%s\n", im.Name(), tags, shortDigest(im.Digest.String()),
			orDash(strings.Join(im.Platforms, ",")), humanBytes(im.Size), lastPull(im.LastPull), orDash(im.State), yesDash(im.Pinned))
	}
	tw.Flush()
	fmt.Fprintf(&b, "%d %s, %s stored\n", len(images), pluralWord(len(images), "image"), humanBytes(stored))
	return b.String()
}

// ls writes its table and its JSON one image at a time (two passes over
// the list for the table's widths), byte for byte as the tabwriter and
// the encoder of the whole list did: no image, one, several with wide
// and non-ASCII cells, HTML characters in JSON strings.
func TestLsStreamsAsBuffered(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	all := []lifecycle.Image{
		{Upstream: "docker.io", Repo: "library/nginx", Tags: []string{"1.27", "latest"}, Digest: digest.FromString("a"), MediaType: "application/vnd.oci.image.index.v1+json",
			Platforms: []string{"linux/amd64", "linux/arm64"}, PlatformsLeftOut: []string{"linux/s390x"}, Size: 123456789, Manifests: 3, Blobs: 7, LastPull: t0, State: "complete", Pinned: true},
		{Upstream: "ghcr.io", Repo: "ÄÖ/<tool>&", Digest: digest.SHA512.FromString("b"), Size: 12, LastPull: t0.In(time.FixedZone("CET", 3600))},
		{Repo: "bare", Tags: []string{"a-very-long-tag-name-that-widens-the-first-column"}, Digest: "sha256:short", State: "partial"},
	}
	for _, images := range [][]lifecycle.Image{nil, all[:1], all} {
		each := func(fn func(lifecycle.Image) error) error {
			for _, im := range images {
				if err := fn(im); err != nil {
					return err
				}
			}
			return nil
		}
		for _, asJSON := range []bool{false, true} {
			write := writeImageTable
			if asJSON {
				write = writeImagesJSON
			}
			var got bytes.Buffer
			if err := write(&got, len(images), each, 1<<30); err != nil {
				t.Fatal(err)
			}
			if want := lsBuffered(images, 1<<30, asJSON); got.String() != want {
				t.Errorf("%d images, JSON %v:\ngot:\n%s\nwant:\n%s", len(images), asJSON, got.String(), want)
			}
		}
	}
}

package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// Mutation is one entry of the list: a snippet of a source file replaced
// by another, the promise that replacement breaks, and the test runs that
// should notice.
type Mutation struct {
	ID      string
	File    string // relative to the module root
	Promise string
	// Tests are go test invocations, each a list of flags (-tags=e2e,
	// -run=...) and packages; every package runs on its own, in order.
	Tests [][]string
	// Harmless, if set, is why a survival of this mutation is acceptable
	// (an equivalent mutant, or one only a power cut would show).
	Harmless string
	Old, New string
	line     int // where the entry starts in the list, for messages
}

// parseList reads a mutation list. Its format:
//
//	# a comment (outside snippets)
//	== id
//	file: proxy/fill.go
//	promise: the last byte is held back until the digest is verified
//	test: ./proxy
//	test: -tags=e2e ./tests/crash/
//	harmless: why surviving is fine (optional)
//	--- old
//	exact lines of the file, tabs included
//	--- new
//	the lines that replace them
//
// A snippet runs to the next "--- " marker, "== " entry or line starting
// with "#" (Go code never does); its trailing blank lines are dropped, and
// it has no final newline.
func parseList(path string) ([]*Mutation, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var (
		out     []*Mutation
		cur     *Mutation
		section string // "", "old" or "new"
		snippet []string
	)
	endSnippet := func() {
		for len(snippet) > 0 && strings.TrimSpace(snippet[len(snippet)-1]) == "" {
			snippet = snippet[:len(snippet)-1]
		}
		text := strings.Join(snippet, "\n")
		switch section {
		case "old":
			cur.Old = text
		case "new":
			cur.New = text
		}
		section, snippet = "", nil
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "== "):
			if cur != nil {
				endSnippet()
			}
			cur = &Mutation{ID: strings.TrimSpace(line[3:]), line: n}
			out = append(out, cur)
		case cur != nil && (line == "--- old" || line == "--- new"):
			endSnippet()
			section = line[4:]
		case section != "" && !strings.HasPrefix(line, "#"):
			snippet = append(snippet, line)
		case strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "":
			endSnippet()
		case cur == nil:
			return nil, fmt.Errorf("%s:%d: text before the first entry: %q", path, n, line)
		default:
			key, val, ok := strings.Cut(line, ":")
			val = strings.TrimSpace(val)
			switch {
			case !ok:
				return nil, fmt.Errorf("%s:%d: want key: value, got %q", path, n, line)
			case key == "file":
				cur.File = val
			case key == "promise":
				cur.Promise = val
			case key == "harmless":
				cur.Harmless = val
			case key == "test":
				cur.Tests = append(cur.Tests, strings.Fields(val))
			default:
				return nil, fmt.Errorf("%s:%d: unknown key %q", path, n, key)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if cur != nil {
		endSnippet()
	}
	seen := map[string]bool{}
	for _, m := range out {
		switch {
		case m.ID == "" || seen[m.ID]:
			return nil, fmt.Errorf("%s:%d: empty or duplicate id %q", path, m.line, m.ID)
		case m.File == "" || m.Promise == "" || len(m.Tests) == 0:
			return nil, fmt.Errorf("%s:%d: %s needs file, promise and test", path, m.line, m.ID)
		case m.Old == "" || m.Old == m.New:
			return nil, fmt.Errorf("%s:%d: %s needs an old snippet and a different new one", path, m.line, m.ID)
		}
		seen[m.ID] = true
	}
	return out, nil
}

package config

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/docker-mirror/docker-mirror/redact"

	"gopkg.in/yaml.v3"
)

// fileError is a mistake in the configuration file: its line, the key
// path it is about ("" for the file as a whole) and what is wrong.
type fileError struct {
	line int
	key  string
	msg  string
}

func (e *fileError) Error() string {
	var b strings.Builder
	if e.line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.line)
	}
	if e.key != "" {
		b.WriteString(keyText(e.key) + ": ")
	}
	b.WriteString(e.msg)
	return b.String()
}

// keyText is a key path as an error shows it: as it is, or quoted if it
// holds a character that does not print (a newline would break the
// message's one line).
func keyText(key string) string {
	if strings.IndexFunc(key, func(r rune) bool { return !strconv.IsPrint(r) }) >= 0 {
		return strconv.Quote(key)
	}
	return key
}

// yamlSyntax is the shape of yaml.v3's syntax errors.
var yamlSyntax = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlError rewrites an error of the YAML decoder in the shape of the
// others ("line N: what is wrong"), on one line.
func yamlError(err error) error {
	msg := strings.Join(strings.Fields(err.Error()), " ")
	if m := yamlSyntax.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &fileError{line: line, msg: "invalid YAML: " + m[2]}
	}
	return &fileError{msg: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
}

// controlChar names the first control character in s, if it holds one:
// no key or value of a configuration does, from a file, a flag or a
// variable.
func controlChar(s string) error {
	i := strings.IndexFunc(s, unicode.IsControl)
	if i < 0 {
		return nil
	}
	r, _ := utf8.DecodeRuneInString(s[i:])
	return fmt.Errorf("control character %U at byte %d (keys and values hold none; check the quoting)", r, i)
}

// checkText refuses a key or value holding a control character (a line
// break, a tab): no path, name, URL or password holds one, and where one
// appears it is a quoting mistake. (yaml.v3 also writes a value of line
// breaks only as a block that reads back empty.) The value is not echoed,
// as it may be a password; the key path and the line are.
func checkText(n *yaml.Node, path string) error {
	control := func(s *yaml.Node, key, what string) error {
		if err := controlChar(s.Value); err != nil {
			return &fileError{line: s.Line, key: key, msg: "invalid " + what + ": " + err.Error()}
		}
		return nil
	}
	switch n.Kind {
	case yaml.ScalarNode:
		return control(n, path, "value")
	case yaml.SequenceNode:
		for i, e := range n.Content {
			if err := checkText(e, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			key := redact.URL(k.Value)
			if path != "" {
				key = path + "." + key
			}
			if err := control(k, key, "key"); err != nil {
				return err
			}
			if err := checkText(n.Content[i+1], key); err != nil {
				return err
			}
		}
	}
	return nil
}

// collectLines records in lines the line of every key of the mapping n,
// by its key path (upstreams.ghcr.io.url), so that Validate's errors can
// name the line of the value they are about. Aliases are not followed:
// their keys are on the lines of the anchor (and an alias may hold itself).
func collectLines(n *yaml.Node, prefix string, lines map[string]int) {
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if k.Kind != yaml.ScalarNode {
			continue
		}
		path := k.Value
		if prefix != "" {
			path = prefix + "." + k.Value
		}
		if _, dup := lines[path]; !dup {
			lines[path] = k.Line
		}
		collectLines(n.Content[i+1], path, lines)
	}
}

// origins records where the values of a resolved configuration came from,
// so that an error of Validate names the flag, the variable or the line of
// the file that set the bad value.
type origins struct {
	file  string
	lines map[string]int    // key path: its line in file
	setBy map[string]string // key path: the flag or variable that set it last
}

// record notes that source (--flag or DOCKER_MIRROR_X) set k to vals;
// ups are the upstreams they were set in.
func (o origins) record(k key, vals []string, source string, ups map[string]Upstream) {
	switch k.name {
	case "upstream":
		for _, v := range vals {
			if host, _, ok := strings.Cut(v, "="); ok && host != DockerHubHost {
				o.setBy["upstreams."+upstreamKey(ups, host)+".url"] = source
			} else {
				o.setBy["upstream"] = source
			}
		}
	default:
		o.setBy[k.fileKeyOrName()] = source
	}
}

// validateKeys matches the key paths Validate's errors start with:
// "platforms: ...", "upstreams.ghcr.io.url: ...", "tls_cert, tls_key: ...".
var validateKeys = regexp.MustCompile(`^([a-z_]+(?:\.[^ ,]+)?(?:, [a-z_]+(?:\.[^ ,]+)?)*): (.*)$`)

// explain turns an error of Validate into one naming where the bad value
// came from: "--platform: platforms: invalid platform ...", "DOCKER_MIRROR_X:
// KEY: ...", "config FILE: line N: KEY: ...", or "config: KEY: ..." for a
// default or a source it cannot tell for sure. An error about several keys
// names the source of each: "config FILE: storage (line 1), destination
// (--destination): ...".
func (o origins) explain(err error) error {
	m := validateKeys.FindStringSubmatch(err.Error())
	if m == nil {
		return fmt.Errorf("config: %w", err)
	}
	names, msg := strings.Split(m[1], ", "), m[2]
	if len(names) == 1 {
		switch src, line := o.source(names[0]); {
		case src != "":
			return fmt.Errorf("%s: %w", src, err)
		case line > 0:
			return fmt.Errorf("config %s: line %d: %w", o.file, line, err)
		}
		return fmt.Errorf("config: %w", err)
	}
	prefix := "config"
	for i, key := range names {
		if src, line := o.source(key); src != "" {
			names[i] += " (" + src + ")"
		} else if line > 0 {
			names[i] += fmt.Sprintf(" (line %d)", line)
			prefix = "config " + o.file
		}
	}
	return fmt.Errorf("%s: %s: %s", prefix, strings.Join(names, ", "), msg)
}

// source returns the flag or variable that set key, or else its line in
// the file (or of the closest enclosing key there), or neither when it
// came from the defaults or cannot be told: a flag set another key of the
// same block.
func (o origins) source(key string) (string, int) {
	if src, ok := o.setBy[key]; ok {
		return src, 0
	}
	if src := o.onlySource(key); src != "" {
		return src, 0
	}
	top, _, _ := strings.Cut(key, ".")
	for p := range o.setBy {
		if t, _, _ := strings.Cut(p, "."); t == top {
			return "", 0
		}
	}
	for p := key; p != ""; {
		if line, ok := o.lines[p]; ok {
			return "", line
		}
		i := strings.LastIndex(p, ".")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return "", 0
}

// onlySource returns the one flag or variable that set every key under
// key (upstreams: the hosts --upstream named), when the file sets none
// there: an error about key as a whole (an upstream's host) is that
// source's. "" when none did, or several.
func (o origins) onlySource(key string) string {
	if _, inFile := o.lines[key]; inFile {
		return ""
	}
	only := ""
	for p, src := range o.setBy {
		if !strings.HasPrefix(p, key+".") {
			continue
		}
		if only != "" && only != src {
			return ""
		}
		only = src
	}
	return only
}

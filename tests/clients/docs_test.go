package clients

// The docs and the code name the same things, both ways: every flag,
// config-file key, DOCKER_MIRROR_* variable, route label and metric the
// code has is documented, and every one the docs name exists. The lists
// are derived from the code (the flag set, the Config struct's yaml tags,
// the variables the configuration asks for, the route table, the metrics
// registry), so a new setting or metric fails this test until it is
// documented, and nothing here needs editing for it. (Flags of the other
// commands: cmd/docker-mirror/docs_test.go.)

import (
	"flag"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/mux"
	"golang.org/x/crypto/bcrypt"
	"gopkg.in/yaml.v3"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/proxy/access"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// docs is the operator documentation: README.md, docs/*.md and the files
// under docs/examples, by path relative to the repository.
func docs(t *testing.T) map[string]string {
	t.Helper()
	root := RepoRoot(t)
	out := map[string]string{"README.md": readRepoFile(t, "README.md")}
	mds, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range mds {
		rel, _ := filepath.Rel(root, f)
		out[filepath.ToSlash(rel)] = readRepoFile(t, filepath.ToSlash(rel))
	}
	err = filepath.WalkDir(filepath.Join(root, "docs", "examples"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[filepath.ToSlash(rel)] = readRepoFile(t, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// allDocs is every doc joined, for "is it mentioned anywhere".
func allDocs(d map[string]string) string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(d)) {
		b.WriteString(d[name])
		b.WriteString("\n")
	}
	return b.String()
}

// mentions returns, for each match of re's first group in the docs, the
// files naming it.
func mentions(d map[string]string, re *regexp.Regexp) map[string][]string {
	out := map[string][]string{}
	for name, text := range d {
		for _, m := range re.FindAllStringSubmatch(text, -1) {
			if !slices.Contains(out[m[1]], name) {
				out[m[1]] = append(out[m[1]], name)
			}
		}
	}
	return out
}

// serveFlags are the flags of serve (and of every command taking the
// configuration).
func serveFlags() (*flag.FlagSet, *config.Flags) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	return fs, config.Bind(fs)
}

// configTable returns the rows of operations.md's configuration table
// (| flag | environment | file key | default | meaning |), split in cells.
func configTable(t *testing.T, ops string) [][]string {
	t.Helper()
	_, rest, ok := strings.Cut(ops, "\n| flag | environment | file key |")
	if !ok {
		t.Fatal("operations.md has no configuration table (| flag | environment | file key | ...)")
	}
	var rows [][]string
	for i, line := range strings.Split(rest, "\n") {
		if i == 0 {
			continue // the rest of the header
		}
		if !strings.HasPrefix(line, "|") {
			break
		}
		if strings.HasPrefix(line, "| ---") {
			continue
		}
		rows = append(rows, strings.Split(line, "|"))
	}
	return rows
}

var backticked = regexp.MustCompile("`([^`\n]+)`")

func TestDocsFlagsBothWays(t *testing.T) {
	d := docs(t)
	ops := d["docs/operations.md"]
	fs, _ := serveFlags()
	// Code -> docs: in the configuration table, as `--name`.
	var column []string
	for _, row := range configTable(t, ops) {
		column = append(column, row[1])
	}
	firstColumn := strings.Join(column, "\n")
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(firstColumn, "`--"+f.Name) {
			t.Errorf("--%s is not in operations.md's configuration table", f.Name)
		}
	})
	// Docs -> code: every flag the table names is a flag of serve.
	for _, m := range regexp.MustCompile("`--([a-z0-9-]+)").FindAllStringSubmatch(firstColumn, -1) {
		if fs.Lookup(m[1]) == nil {
			t.Errorf("operations.md's configuration table names --%s, which serve does not have", m[1])
		}
	}
}

// configKeys walks a configuration struct's yaml tags: every key path
// (maps of settings blocks as "upstreams.*.url"), and the paths below which
// anything goes (storage: the driver's own parameters).
func configKeys(t reflect.Type, prefix string, keys, opaque map[string]bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || name == "" || name == "-" {
			continue
		}
		path := prefix + name
		keys[path] = true
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.Struct:
			configKeys(ft, path+".", keys, opaque)
		case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
			configKeys(ft.Elem(), path+".*.", keys, opaque)
		case ft.Kind() == reflect.Map:
			opaque[path] = true
		}
	}
}

// knownKey reports whether a dotted path the docs name is a key: each
// segment a key, "*" standing for any host (which may hold dots).
func knownKey(path string, keys, opaque map[string]bool) bool {
	if keys[path] {
		return true
	}
	for o := range opaque {
		if strings.HasPrefix(path, o+".") {
			return true
		}
	}
	// A map of blocks: PREFIX.HOST or PREFIX.HOST.KEY.
	for k := range keys {
		pre, leaf, ok := strings.Cut(k, ".*.")
		if !ok || strings.Contains(leaf, ".") || !strings.HasPrefix(path, pre+".") {
			continue
		}
		rest := strings.TrimPrefix(path, pre+".")
		if strings.HasSuffix(rest, "."+leaf) || strings.Count(rest, ".") <= 1 {
			return true
		}
	}
	return false
}

// docTypos are key paths the docs show on purpose as mistakes (an example
// of the error a typo gives).
var docTypos = map[string]bool{"upstreams.ghcr.io.pasword": true}

func TestDocsConfigKeysBothWays(t *testing.T) {
	d := docs(t)
	text := allDocs(d)
	keys, opaque := map[string]bool{}, map[string]bool{}
	configKeys(reflect.TypeFor[config.Config](), "", keys, opaque)
	if len(keys) < 20 {
		t.Fatalf("only %d config keys found: %v", len(keys), keys)
	}
	leaves := map[string]bool{}
	for k := range keys {
		leaves[k[strings.LastIndexByte(k, '.')+1:]] = true
	}

	// Code -> docs: the path or its last part in backticks, or as a key in
	// a YAML example.
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		leaf := k[strings.LastIndexByte(k, '.')+1:]
		asYAML := regexp.MustCompile(`(?m)^\s*(- )?` + regexp.QuoteMeta(leaf) + `:`)
		if !strings.Contains(text, "`"+k+"`") && !strings.Contains(text, "`"+leaf+"`") && !asYAML.MatchString(text) {
			t.Errorf("the config key %s is not documented (neither `%s` nor `%s`)", k, k, leaf)
		}
	}

	// Docs -> code: the configuration table's file keys ...
	for _, row := range configTable(t, d["docs/operations.md"]) {
		for _, m := range backticked.FindAllStringSubmatch(row[3], -1) {
			if !leaves[m[1]] && !keys[m[1]] {
				t.Errorf("operations.md's configuration table names the file key `%s`, which the configuration does not have", m[1])
			}
		}
	}
	// ... and every dotted key path in backticks under a key that holds
	// settings (auth.metrics, upstreams.docker.io.url, sync.pin).
	parents := map[string]bool{}
	for k := range keys {
		if i := strings.IndexByte(k, '.'); i > 0 {
			parents[k[:i]] = true
		}
	}
	for k := range opaque {
		parents[k] = true
	}
	dotted := regexp.MustCompile("`([a-z_]+(?:\\.[A-Za-z0-9_:-]+)+)`")
	for path, files := range mentions(d, dotted) {
		top, _, _ := strings.Cut(path, ".")
		if parents[top] && !docTypos[path] && !knownKey(path, keys, opaque) {
			t.Errorf("%s names the config key %s, which the configuration does not have", strings.Join(files, ", "), path)
		}
	}
}

func TestDocsEnvironmentBothWays(t *testing.T) {
	d := docs(t)
	text := allDocs(d)
	// The variables are those the configuration asks the environment for.
	fs, flags := serveFlags()
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	asked := map[string]bool{}
	if _, err := flags.Resolve(func(name string) (string, bool) {
		asked[name] = true
		return "", false
	}); err != nil {
		t.Fatal(err)
	}
	n := 0
	for v := range asked {
		if strings.HasPrefix(v, config.EnvPrefix) {
			n++
		}
	}
	if n < 10 {
		t.Fatalf("the configuration asked for only %d %s* variables: %v", n, config.EnvPrefix, asked)
	}
	// Besides, variables named whole in the code: read elsewhere, or (in
	// the tests) switches of the test suites, which the docs may name.
	literal := regexp.MustCompile(`"(` + config.EnvPrefix + `[A-Z0-9_]*[A-Z0-9])"`)
	read := goStrings(t, literal, false)
	for v := range asked {
		if strings.HasPrefix(v, config.EnvPrefix) {
			read[v] = true
		}
	}
	for v := range read {
		if !regexp.MustCompile(`\b` + v + `\b`).MatchString(text) {
			t.Errorf("%s is read but not documented", v)
		}
	}
	known := goStrings(t, literal, true)
	for v := range read {
		known[v] = true
	}
	for v, files := range mentions(d, regexp.MustCompile(`\b(`+config.EnvPrefix+`[A-Z0-9_]*[A-Z0-9])\b`)) {
		if !known[v] {
			t.Errorf("%s names %s, which docker-mirror does not read", strings.Join(files, ", "), v)
		}
	}
}

// liveNames returns the route labels of the route table and the metric
// families a running mirror exposes. Every route of the table is asked
// once (refused: the mirror requires a login, so no handler runs), then
// an unknown path and a method no route takes.
func liveNames(t *testing.T) (routes, families map[string]bool) {
	t.Helper()
	up := fixture.StartUpstream(t)
	h, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(file, []byte("admin:"+string(h)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pol, err := access.Load(file, []string{"admin"}, false)
	if err != nil {
		t.Fatal(err)
	}
	m := servertest.Start(t, up.URL(), proxy.WithAccess(pol, access.Admin))
	// The production table: the proxy's routes and the status page's.
	router := m.Proxy.Routes(m.Server.Status.Routes)
	vars := regexp.MustCompile(`\{([a-z]+)(:[^}]*)?\}`)
	sample := map[string]string{"name": "library/doc", "reference": "latest", "digest": "sha256:" + strings.Repeat("0", 64), "action": "pin"}
	var reqs []*http.Request
	err = router.Walk(func(r *mux.Route, _ *mux.Router, _ []*mux.Route) error {
		tmpl, err := r.GetPathTemplate()
		if err != nil {
			// A repository's routes match without a template; each
			// is named after the one it stands for.
			if tmpl = r.GetName(); tmpl == "" {
				return nil
			}
		}
		path := vars.ReplaceAllStringFunc(tmpl, func(v string) string {
			if s, ok := sample[vars.FindStringSubmatch(v)[1]]; ok {
				return s
			}
			return "x"
		})
		methods, err := r.GetMethods()
		if err != nil {
			methods = []string{http.MethodGet, http.MethodPut} // a matcher decides (the refused writes)
		}
		for _, method := range methods {
			reqs = append(reqs, httptest.NewRequest(method, path, nil))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	reqs = append(reqs, httptest.NewRequest(http.MethodGet, "/no/such/endpoint", nil), httptest.NewRequest(http.MethodPut, "/prefetch", nil))
	handler := m.Server.Handler()
	for _, r := range reqs {
		handler.ServeHTTP(httptest.NewRecorder(), r)
	}
	scrape := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	scrape.SetBasicAuth("admin", "pw")
	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, scrape)
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	body := rec.Body.String()
	routes, families = map[string]bool{}, map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^docker_mirror_http_requests_total\{.*route="([^"]+)"`).FindAllStringSubmatch(body, -1) {
		routes[m[1]] = true
	}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (\S+) `).FindAllStringSubmatch(body, -1) {
		families[m[1]] = true
	}
	return routes, families
}

// documentedRoutes are the route values operations.md lists: the
// backticked words after "`route` is" in the metrics table, up to the
// sentence's end.
func documentedRoutes(t *testing.T, ops string) map[string]bool {
	t.Helper()
	_, rest, ok := strings.Cut(ops, "`route` is ")
	if !ok {
		t.Fatal("operations.md does not list the route values (\"`route` is ...\")")
	}
	list, _, _ := strings.Cut(rest, ";")
	out := map[string]bool{}
	// Explanations in brackets name paths and codes, not routes.
	list = regexp.MustCompile(`\([^)]*\)`).ReplaceAllString(list, "")
	for _, m := range backticked.FindAllStringSubmatch(list, -1) {
		out[m[1]] = true
	}
	return out
}

// goStrings returns the first group of re's matches in the module's Go
// sources; with tests, in the test code too (tests/, bench/, _test.go).
func goStrings(t *testing.T, re *regexp.Regexp, tests bool) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	err := filepath.WalkDir(RepoRoot(t), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || !tests && (d.Name() == "tests" || d.Name() == "bench")) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || !tests && strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range re.FindAllSubmatch(b, -1) {
			out[string(m[1])] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sourceMetricNames are the docker_mirror_* names in the Go sources: the
// metrics a running mirror has not used yet (a vector with no series) do
// not show in a scrape.
func sourceMetricNames(t *testing.T) map[string]bool {
	return goStrings(t, regexp.MustCompile(`"(docker_mirror_[a-z0-9_]+)"`), false)
}

func TestDocsRoutesAndMetricsBothWays(t *testing.T) {
	d := docs(t)
	text := allDocs(d)
	routes, families := liveNames(t)
	if len(routes) < 10 {
		t.Fatalf("only %d route labels seen: %v", len(routes), routes)
	}
	documented := documentedRoutes(t, d["docs/operations.md"])
	for r := range routes {
		if !documented[r] {
			t.Errorf("the route label %q is not among the route values operations.md lists", r)
		}
	}
	for r := range documented {
		if !routes[r] {
			t.Errorf("operations.md lists the route value %q, which no route has (the table has %v)", r, slices.Sorted(maps.Keys(routes)))
		}
	}

	metrics := sourceMetricNames(t)
	for f := range families {
		if strings.HasPrefix(f, "docker_mirror_") {
			metrics[f] = true
		}
	}
	for name := range metrics {
		if !strings.Contains(text, "`"+name+"`") {
			t.Errorf("the metric %s is not documented (as `%s`)", name, name)
		}
	}
	// Docs -> code, histogram and summary series by their family.
	series := regexp.MustCompile(`^(.*)_(bucket|sum|count)$`)
	for name, files := range mentions(d, regexp.MustCompile(`\b(docker_mirror_[a-z0-9_]*[a-z0-9])\b`)) {
		if m := series.FindStringSubmatch(name); m != nil && metrics[m[1]] {
			continue
		}
		if !metrics[name] {
			t.Errorf("%s names the metric %s, which docker-mirror does not have", strings.Join(files, ", "), name)
		}
	}
}

// The alert rules use metrics that exist.
func TestAlertRulesUseExistingMetrics(t *testing.T) {
	rules := readRepoFile(t, "docs/examples/alerts.yaml")
	_, families := liveNames(t)
	metrics := sourceMetricNames(t)
	for f := range families {
		metrics[f] = true
	}
	used := regexp.MustCompile(`\b(docker_mirror_[a-z0-9_]*[a-z0-9])\b`).FindAllStringSubmatch(rules, -1)
	if len(used) == 0 {
		t.Fatal("alerts.yaml uses no docker_mirror_* metric")
	}
	for _, m := range used {
		if !metrics[m[1]] {
			t.Errorf("alerts.yaml uses %s, which docker-mirror does not have", m[1])
		}
	}
}

// yamlBlock is a fenced YAML example of a Markdown file.
var yamlBlock = regexp.MustCompile("(?s)```yaml\n(.*?)```")

// Every configuration the docs show (a ```yaml block of a Markdown file,
// a YAML file under docs/examples) is one the configuration accepts: its
// keys exist and, taken together, its values validate. A block none of
// whose top-level keys is a configuration key is another program's
// (Kubernetes, k3s, Prometheus) and is skipped.
func TestDocsConfigExamplesAreValid(t *testing.T) {
	top := map[string]bool{}
	ct := reflect.TypeFor[config.Config]()
	for i := range ct.NumField() {
		name, _, _ := strings.Cut(ct.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			top[name] = true
		}
	}
	d := docs(t)
	checked := 0
	for _, name := range slices.Sorted(maps.Keys(d)) {
		text := d[name]
		var examples []string
		switch {
		case strings.HasSuffix(name, ".md"):
			for _, m := range yamlBlock.FindAllStringSubmatch(text, -1) {
				examples = append(examples, m[1])
			}
		case strings.HasSuffix(name, ".yaml"), strings.HasSuffix(name, ".yml"):
			examples = append(examples, text)
		}
		for _, ex := range examples {
			var keys map[string]any
			if yaml.Unmarshal([]byte(ex), &keys) != nil {
				continue // not a mapping: not a configuration
			}
			ours := false
			for k := range keys {
				ours = ours || top[k]
			}
			if !ours {
				continue
			}
			checked++
			c, err := config.Parse(strings.NewReader(ex))
			if err == nil {
				err = c.Validate()
			}
			if err != nil {
				t.Errorf("%s: an example configuration is refused: %v\n%s", name, err, ex)
			}
		}
	}
	if checked < 5 {
		t.Fatalf("only %d example configurations found in the docs", checked)
	}
}

// TestDocsFlagDefaults: the default the configuration tables give a flag
// (operations.md's, and the README's serve flags) is the one serve has, as
// its --help says it. Only a backticked default is compared (`30s`, `4`);
// words such as "none" or "no limit" are prose. Durations compare by value
// (`1m` is `1m0s`).
func TestDocsFlagDefaults(t *testing.T) {
	d := docs(t)
	fs, _ := serveFlags()
	defaultRE := regexp.MustCompile(`\(default ([^;]*);`)
	flagRE := regexp.MustCompile("`--([a-z0-9-]+)")
	same := func(doc, code string) bool {
		if doc == code {
			return true
		}
		a, err1 := time.ParseDuration(doc)
		b, err2 := time.ParseDuration(code)
		return err1 == nil && err2 == nil && a == b
	}
	tables := map[string]struct {
		header       string
		defaultIndex int
	}{
		"docs/operations.md": {"\n| flag | environment | file key | default | meaning |", 4},
		"README.md":          {"\n| flag | default | meaning |", 2},
	}
	for name, tb := range tables {
		_, rest, ok := strings.Cut(d[name], tb.header)
		if !ok {
			t.Fatalf("%s has no table %q", name, strings.TrimSpace(tb.header))
		}
		rows := 0
		for i, line := range strings.Split(rest, "\n") {
			if i == 0 || strings.HasPrefix(line, "| ---") {
				continue
			}
			if !strings.HasPrefix(line, "|") {
				break
			}
			cells := strings.Split(line, "|")
			if len(cells) <= tb.defaultIndex {
				t.Fatalf("%s: a row with too few cells: %s", name, line)
			}
			m := backticked.FindStringSubmatch(cells[tb.defaultIndex])
			if m == nil {
				continue
			}
			for _, f := range flagRE.FindAllStringSubmatch(cells[1], -1) {
				fl := fs.Lookup(f[1])
				if fl == nil {
					continue // TestDocsFlagsBothWays says so
				}
				dm := defaultRE.FindStringSubmatch(fl.Usage)
				if dm == nil {
					continue
				}
				rows++
				if !same(m[1], dm[1]) {
					t.Errorf("%s gives --%s the default %q; serve's is %q", name, f[1], m[1], dm[1])
				}
			}
		}
		if rows < 10 {
			t.Fatalf("%s: only %d defaults compared", name, rows)
		}
	}
}

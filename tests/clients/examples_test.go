package clients

// Checks of the operator examples (docs/examples) and of docs/operations.md
// that need no client and no cluster; they run without the e2e tag. The
// examples used by real clients (daemon.json, hosts.toml, registries.conf)
// are exercised by the e2e tests.

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/docker-mirror/docker-mirror/config"
)

func readRepoFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(RepoRoot(t), filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestExamplesNameThePlaceholder(t *testing.T) {
	for _, name := range ClientExamples {
		got := Example(t, name, "127.0.0.1:5000")
		if !strings.Contains(got, "127.0.0.1:5000") {
			t.Errorf("%s: placeholder not substituted", name)
		}
	}
}

func TestExampleDaemonJSON(t *testing.T) {
	var cfg map[string]json.RawMessage
	dec := json.NewDecoder(strings.NewReader(readRepoFile(t, "docs/examples/"+ExampleDaemonJSON)))
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("daemon.json: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		t.Fatalf("daemon.json: trailing data after the object (%v)", err)
	}
	var mirrors, insecure []string
	if err := json.Unmarshal(cfg["registry-mirrors"], &mirrors); err != nil {
		t.Fatalf("registry-mirrors: %v", err)
	}
	if !slices.Equal(mirrors, []string{"http://" + Placeholder}) {
		t.Errorf("registry-mirrors = %q, want [http://%s]", mirrors, Placeholder)
	}
	if err := json.Unmarshal(cfg["insecure-registries"], &insecure); err != nil {
		t.Fatalf("insecure-registries: %v", err)
	}
	if !slices.Equal(insecure, []string{Placeholder}) {
		t.Errorf("insecure-registries = %q, want [%s]", insecure, Placeholder)
	}
	for k := range cfg {
		if k != "registry-mirrors" && k != "insecure-registries" {
			t.Errorf("unexpected key %q", k)
		}
	}
}

// Just enough of the Kubernetes API to check the example.
type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec yaml.Node `yaml:"spec"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

type k8sContainer struct {
	Name  string   `yaml:"name"`
	Image string   `yaml:"image"`
	Args  []string `yaml:"args"`
	Env   []struct {
		Name  string `yaml:"name"`
		Value string `yaml:"value"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
	LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
	VolumeMounts   []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

type k8sDeploymentSpec struct {
	Replicas int `yaml:"replicas"`
	Strategy struct {
		Type string `yaml:"type"`
	} `yaml:"strategy"`
	Selector struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	} `yaml:"selector"`
	Template struct {
		Metadata struct {
			Labels map[string]string `yaml:"labels"`
		} `yaml:"metadata"`
		Spec struct {
			TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
			SecurityContext               struct {
				RunAsUser  int `yaml:"runAsUser"`
				RunAsGroup int `yaml:"runAsGroup"`
				FSGroup    int `yaml:"fsGroup"`
			} `yaml:"securityContext"`
			Containers []k8sContainer `yaml:"containers"`
			Volumes    []struct {
				Name                  string `yaml:"name"`
				PersistentVolumeClaim *struct {
					ClaimName string `yaml:"claimName"`
				} `yaml:"persistentVolumeClaim"`
			} `yaml:"volumes"`
		} `yaml:"spec"`
	} `yaml:"template"`
}

type k8sServiceSpec struct {
	Selector map[string]string `yaml:"selector"`
	Ports    []struct {
		Port       int `yaml:"port"`
		TargetPort any `yaml:"targetPort"`
	} `yaml:"ports"`
}

// dockerfileCMD returns the exec-form CMD of the repository's Dockerfile.
func dockerfileCMD(t *testing.T) []string {
	t.Helper()
	var cmd []string
	for _, line := range strings.Split(readRepoFile(t, "Dockerfile"), "\n") {
		if rest, ok := strings.CutPrefix(line, "CMD "); ok {
			cmd = nil
			if err := json.Unmarshal([]byte(rest), &cmd); err != nil {
				t.Fatalf("Dockerfile: CMD is not in exec (JSON) form: %q: %v", line, err)
			}
		}
	}
	if len(cmd) == 0 {
		t.Fatal("Dockerfile: no CMD")
	}
	return cmd
}

// dockerfileUser returns the numeric uid and gid of the Dockerfile's USER.
func dockerfileUser(t *testing.T) (uid, gid int) {
	t.Helper()
	for _, line := range strings.Split(readRepoFile(t, "Dockerfile"), "\n") {
		if rest, ok := strings.CutPrefix(line, "USER "); ok {
			u, g, _ := strings.Cut(strings.TrimSpace(rest), ":")
			var err1, err2 error
			uid, err1 = strconv.Atoi(u)
			gid, err2 = strconv.Atoi(g)
			if err1 != nil || err2 != nil {
				t.Fatalf("Dockerfile: USER %q is not numeric uid:gid", rest)
			}
		}
	}
	return uid, gid
}

// resolveServeArgs runs docker-mirror's own configuration resolution on a
// container's args and environment, as `docker-mirror serve` does.
func resolveServeArgs(t *testing.T, args []string, env map[string]string) config.Config {
	t.Helper()
	if len(args) == 0 || args[0] != "serve" {
		t.Fatalf("args %q do not start with the serve command", args)
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	flags := config.Bind(fs)
	if err := fs.Parse(args[1:]); err != nil {
		t.Fatalf("docker-mirror serve rejects the args %q: %v", args[1:], err)
	}
	if fs.NArg() != 0 {
		t.Fatalf("docker-mirror serve: unexpected arguments %q", fs.Args())
	}
	cfg, err := flags.Resolve(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatalf("docker-mirror serve %q with env %v: %v", args[1:], env, err)
	}
	return cfg
}

func isPort(v any, want int) bool {
	switch p := v.(type) {
	case int:
		return p == want
	case string:
		return p == strconv.Itoa(want)
	}
	return false
}

func TestExampleKubernetes(t *testing.T) {
	dec := yaml.NewDecoder(strings.NewReader(readRepoFile(t, "docs/examples/"+ExampleKubernetes)))
	objs := map[string]k8sObject{}
	for {
		var o k8sObject
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("kubernetes.yaml: %v", err)
		}
		if _, dup := objs[o.Kind]; dup {
			t.Fatalf("kubernetes.yaml: two %s objects", o.Kind)
		}
		if o.APIVersion == "" || o.Metadata.Name == "" {
			t.Errorf("kubernetes.yaml: %s without apiVersion or metadata.name", o.Kind)
		}
		objs[o.Kind] = o
	}
	for _, k := range []string{"PersistentVolumeClaim", "Deployment", "Service"} {
		if _, ok := objs[k]; !ok {
			t.Fatalf("kubernetes.yaml: no %s", k)
		}
	}
	if len(objs) != 3 {
		t.Errorf("kubernetes.yaml: %d objects, want a PersistentVolumeClaim, a Deployment and a Service", len(objs))
	}

	var dep k8sDeploymentSpec
	depSpec := objs["Deployment"].Spec
	if err := depSpec.Decode(&dep); err != nil {
		t.Fatalf("Deployment spec: %v", err)
	}
	if dep.Replicas != 1 || dep.Strategy.Type != "Recreate" {
		t.Errorf("Deployment: replicas %d, strategy %q; want 1 and Recreate (one process owns the bbolt index)", dep.Replicas, dep.Strategy.Type)
	}
	for k, v := range dep.Selector.MatchLabels {
		if dep.Template.Metadata.Labels[k] != v {
			t.Errorf("Deployment selector %s=%s does not match the pod labels %v", k, v, dep.Template.Metadata.Labels)
		}
	}
	pod := dep.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("Deployment: %d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if c.Image == "" {
		t.Error("container without image")
	}

	// The args are the image's CMD and docker-mirror accepts them, alone
	// and with the container's environment.
	if cmd := dockerfileCMD(t); !slices.Equal(c.Args, cmd) {
		t.Errorf("container args %q, want the Dockerfile's CMD %q", c.Args, cmd)
	}
	resolveServeArgs(t, c.Args, nil)
	env := map[string]string{}
	for _, e := range c.Env {
		if !strings.HasPrefix(e.Name, config.EnvPrefix) {
			t.Errorf("env %s is not a docker-mirror setting (%s*)", e.Name, config.EnvPrefix)
		}
		env[e.Name] = e.Value
	}
	cfg := resolveServeArgs(t, c.Args, env)
	t.Logf("resolved configuration: %+v", cfg)
	if cfg.Listen != ":5000" {
		t.Errorf("listen = %q, want :5000", cfg.Listen)
	}

	// Ports and probes.
	if len(c.Ports) != 1 || c.Ports[0].ContainerPort != 5000 {
		t.Errorf("container ports %+v, want containerPort 5000", c.Ports)
	}
	for _, p := range []struct {
		what  string
		probe *k8sProbe
		path  string
	}{{"readinessProbe", c.ReadinessProbe, "/readyz"}, {"livenessProbe", c.LivenessProbe, "/healthz"}} {
		switch {
		case p.probe == nil || p.probe.HTTPGet == nil:
			t.Errorf("%s: no httpGet probe", p.what)
		case p.probe.HTTPGet.Path != p.path || !isPort(p.probe.HTTPGet.Port, 5000):
			t.Errorf("%s: GET %s on port %v, want %s on 5000", p.what, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port, p.path)
		}
	}
	if grace := time.Duration(pod.TerminationGracePeriodSeconds) * time.Second; grace <= time.Duration(cfg.ShutdownTimeout) {
		t.Errorf("terminationGracePeriodSeconds %s is not longer than the shutdown timeout %s", grace, cfg.ShutdownTimeout)
	}

	// The data directory is the PersistentVolumeClaim.
	var mountVol string
	for _, m := range c.VolumeMounts {
		if m.MountPath == cfg.Data {
			mountVol = m.Name
		}
	}
	if cfg.Data != "/data" || mountVol == "" {
		t.Errorf("data directory %q: want /data with a volume mounted there (mounts %+v)", cfg.Data, c.VolumeMounts)
	}
	claim := ""
	for _, v := range pod.Volumes {
		if v.Name == mountVol && v.PersistentVolumeClaim != nil {
			claim = v.PersistentVolumeClaim.ClaimName
		}
	}
	if claim == "" || claim != objs["PersistentVolumeClaim"].Metadata.Name {
		t.Errorf("volume %q is not the PersistentVolumeClaim %q (claim %q)", mountVol, objs["PersistentVolumeClaim"].Metadata.Name, claim)
	}

	// The image runs as USER uid:gid; the volume must be writable by it.
	uid, gid := dockerfileUser(t)
	if sc := pod.SecurityContext; sc.RunAsUser != uid || sc.RunAsGroup != gid || sc.FSGroup != gid {
		t.Errorf("pod securityContext %+v, want runAsUser %d, runAsGroup and fsGroup %d (the Dockerfile's USER)", sc, uid, gid)
	}

	// The Service exposes 5000 on the pods.
	var svc k8sServiceSpec
	svcSpec := objs["Service"].Spec
	if err := svcSpec.Decode(&svc); err != nil {
		t.Fatalf("Service spec: %v", err)
	}
	if len(svc.Ports) != 1 || svc.Ports[0].Port != 5000 || !isPort(svc.Ports[0].TargetPort, 5000) {
		t.Errorf("Service ports %+v, want port 5000 -> 5000", svc.Ports)
	}
	if len(svc.Selector) == 0 {
		t.Error("Service without selector")
	}
	for k, v := range svc.Selector {
		if dep.Template.Metadata.Labels[k] != v {
			t.Errorf("Service selector %s=%s does not match the pod labels %v", k, v, dep.Template.Metadata.Labels)
		}
	}
}

// config.yaml says which of its values are not the defaults; that is true.
func TestExampleConfigYAML(t *testing.T) {
	cfg := resolveServeArgs(t, []string{"serve", "--config", ExamplePath(t, ExampleConfigYAML)}, nil)
	toMap := func(c config.Config) map[string]any {
		b, err := yaml.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	got, def := toMap(cfg), toMap(config.Default())
	var differ []string
	for k := range got {
		if !reflect.DeepEqual(got[k], def[k]) {
			differ = append(differ, k)
		}
	}
	slices.Sort(differ)
	claim := "(the values below are the defaults)"
	if n := len(differ); n > 0 {
		claim = "(the values below are the defaults, except " + strings.Join(differ[:n-1], ", ")
		if n > 1 {
			claim += " and "
		}
		claim += differ[n-1] + ")"
	}
	text := strings.Join(strings.Fields(strings.ReplaceAll(readRepoFile(t, "docs/examples/"+ExampleConfigYAML), "#", "")), " ")
	if !strings.Contains(text, claim) {
		t.Errorf("config.yaml differs from the defaults in %q; its comment must say %q", differ, claim)
	}
}

func TestExampleSystemdUnit(t *testing.T) {
	unit := map[string][]string{}
	section := ""
	for _, line := range strings.Split(readRepoFile(t, "docs/examples/"+ExampleSystemdUnit), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("docker-mirror.service: bad line %q", line)
			}
			unit[section+"."+k] = append(unit[section+"."+k], v)
		}
	}
	one := func(key string) string {
		t.Helper()
		if len(unit[key]) != 1 {
			t.Fatalf("docker-mirror.service: %s set %d times, want once", key, len(unit[key]))
		}
		return unit[key][0]
	}
	args := strings.Fields(one("Service.ExecStart"))
	if args[0] != "/usr/local/bin/docker-mirror" {
		t.Errorf("ExecStart runs %s", args[0])
	}
	env := map[string]string{}
	for _, e := range unit["Service.Environment"] {
		k, v, _ := strings.Cut(e, "=")
		env[k] = v
	}
	// The unit reads the example configuration, installed as the comment
	// at its top says.
	const installed = "/etc/docker-mirror/config.yaml"
	i := slices.Index(args, "--config")
	if i < 0 || i+1 >= len(args) || args[i+1] != installed {
		t.Fatalf("ExecStart %q: want --config %s", args, installed)
	}
	if !strings.Contains(readRepoFile(t, "docs/examples/"+ExampleSystemdUnit), "install -D -m 0644 docs/examples/"+ExampleConfigYAML+" "+installed) {
		t.Errorf("docker-mirror.service does not say how to install %s", installed)
	}
	args[i+1] = ExamplePath(t, ExampleConfigYAML)
	if len(env) > 0 || len(args) != 4 {
		t.Errorf("ExecStart %q, Environment %v: settings belong in the file, which flags and variables would override", args, env)
	}
	// systemctl reload sends SIGHUP, which reloads the TLS certificate and
	// the htpasswd file.
	if reload := strings.Fields(one("Service.ExecReload")); !slices.Equal(reload, []string{"/bin/kill", "-HUP", "$MAINPID"}) {
		t.Errorf("ExecReload %q, want /bin/kill -HUP $MAINPID", reload)
	}
	cfg := resolveServeArgs(t, args[1:], env)
	if cfg.Data != "/var/lib/"+one("Service.StateDirectory") {
		t.Errorf("--data %s is not the StateDirectory /var/lib/%s", cfg.Data, one("Service.StateDirectory"))
	}
	stop, err := time.ParseDuration(one("Service.TimeoutStopSec") + "s")
	if err != nil || stop <= time.Duration(cfg.ShutdownTimeout) {
		t.Errorf("TimeoutStopSec %s is not longer than the shutdown timeout %s", one("Service.TimeoutStopSec"), cfg.ShutdownTimeout)
	}
	if one("Service.User") == "" || one("Install.WantedBy") != "multi-user.target" {
		t.Errorf("unit: User %q, WantedBy %q", one("Service.User"), one("Install.WantedBy"))
	}
}

func TestExampleK3sRegistries(t *testing.T) {
	// The whole schema of /etc/rancher/k3s/registries.yaml, so that a typo
	// in a key is an error.
	var reg struct {
		Mirrors map[string]struct {
			Endpoint []string          `yaml:"endpoint"`
			Rewrite  map[string]string `yaml:"rewrite"`
		} `yaml:"mirrors"`
		Configs map[string]struct {
			Auth map[string]string `yaml:"auth"`
			TLS  map[string]any    `yaml:"tls"`
		} `yaml:"configs"`
	}
	dec := yaml.NewDecoder(strings.NewReader(readRepoFile(t, "docs/examples/"+ExampleK3sRegistries)))
	dec.KnownFields(true)
	if err := dec.Decode(&reg); err != nil {
		t.Fatalf("k3s-registries.yaml: %v", err)
	}
	m, ok := reg.Mirrors["docker.io"]
	if !ok || len(reg.Mirrors) != 1 {
		t.Fatalf("mirrors %v: want docker.io only", reg.Mirrors)
	}
	if !slices.Equal(m.Endpoint, []string{"http://" + Placeholder}) {
		t.Errorf("docker.io endpoints %q, want [http://%s]", m.Endpoint, Placeholder)
	}
	if len(m.Rewrite) != 0 {
		t.Errorf("docker.io rewrite %v: the mirror expects the names unchanged", m.Rewrite)
	}
}

// TestOperationsDoc checks that docs/operations.md shows the examples as
// they are, and names every setting and metric docker-mirror has.
func TestOperationsDoc(t *testing.T) {
	doc := readRepoFile(t, "docs/operations.md")
	for _, name := range Examples {
		if !strings.Contains(doc, "(examples/"+name+")") {
			t.Errorf("operations.md does not link examples/%s", name)
		}
		if name == ExampleKubernetes || name == ExampleSystemdUnit {
			continue // linked, too long to embed
		}
		body := readRepoFile(t, "docs/examples/"+name)
		if !strings.Contains(doc, "\n"+body+"```\n") {
			t.Errorf("operations.md does not embed examples/%s verbatim (in a fenced block)", name)
		}
	}

	// Every other yaml block is a docker-mirror configuration file.
	examples := map[string]bool{}
	for _, name := range Examples {
		examples[readRepoFile(t, "docs/examples/"+name)] = true
	}
	blocks := regexp.MustCompile("(?s)\n```yaml\n(.*?)```\n").FindAllStringSubmatch(doc, -1)
	for _, b := range blocks {
		if examples[b[1]] {
			continue
		}
		cfg, err := config.Parse(strings.NewReader(b[1]))
		if err == nil {
			err = cfg.Validate()
		}
		if err != nil {
			t.Errorf("operations.md: configuration block is not valid: %v\n%s", err, b[1])
		}
	}

	// The file keys whose names are not the flag's.
	fileKeys := map[string]string{
		"platform":            "platforms", // the list
		"cluster-self":        "cluster.self",
		"cluster-peer":        "cluster.peers",
		"cluster-peers-dns":   "cluster.peers_dns",
		"cluster-secret-file": "cluster.secret_file",
		"destination-ca-file": "destination.ca_file",
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	config.Bind(fs)
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(doc, "`--"+f.Name) {
			t.Errorf("operations.md does not document --%s", f.Name)
		}
		// Every variable the flag's usage names (DOCKER_MIRROR_CONFIG,
		// DOCKER_MIRROR_PLATFORM or DOCKER_MIRROR_PLATFORMS, ...).
		for _, env := range regexp.MustCompile(`\bDOCKER_MIRROR_[A-Z_]+\b`).FindAllString(f.Usage, -1) {
			if !strings.Contains(doc, "`"+env+"`") {
				t.Errorf("operations.md does not document %s (--%s)", env, f.Name)
			}
		}
		if f.Name == "config" {
			return
		}
		key := strings.ReplaceAll(f.Name, "-", "_")
		if k, ok := fileKeys[f.Name]; ok {
			key = k
		}
		if !strings.Contains(doc, "`"+key+"`") {
			t.Errorf("operations.md does not document the config file key %s", key)
		}
		env := config.EnvPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if !strings.Contains(doc, env) {
			t.Errorf("operations.md does not document %s", env)
		}
	})

	metricRE := regexp.MustCompile(`"(docker_mirror_[a-z0-9_]+)"`)
	var sources []string
	for _, pattern := range []string{"metrics/*.go", "proxy/*.go"} {
		files, err := filepath.Glob(filepath.Join(RepoRoot(t), pattern))
		if err != nil {
			t.Fatal(err)
		}
		sources = append(sources, files...)
	}
	found := 0
	for _, f := range sources {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range metricRE.FindAllSubmatch(b, -1) {
			found++
			if !bytes.Contains([]byte(doc), append(append([]byte("`"), m[1]...), '`')) {
				t.Errorf("operations.md does not document the metric %s (%s)", m[1], filepath.Base(f))
			}
		}
	}
	if found == 0 {
		t.Error("no docker_mirror_* metric found in metrics/ and proxy/")
	}
}

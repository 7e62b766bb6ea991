package config_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/docker-mirror/docker-mirror/config"
)

// sharedStore is the storage a cluster needs: one every replica reaches.
const sharedStore = "storage: {s3: {bucket: mirror, region: us-east-1}}\n"

func TestClusterFromFileFlagsAndEnv(t *testing.T) {
	file := writeFile(t, sharedStore+`cluster:
  self: http://10.0.0.1:5000
  peers: [http://10.0.0.2:5000, http://10.0.0.3:5000]
  peers_dns: mirror-peers.ci.svc.cluster.local:5000
`)
	c := mustResolve(t, []string{"--config", file}, nil)
	want := config.Cluster{Self: "http://10.0.0.1:5000", Peers: []string{"http://10.0.0.2:5000", "http://10.0.0.3:5000"}, PeersDNS: "mirror-peers.ci.svc.cluster.local:5000"}
	if c.Cluster.Self != want.Self || !slices.Equal(c.Cluster.Peers, want.Peers) || c.Cluster.PeersDNS != want.PeersDNS {
		t.Fatalf("file: cluster %+v, want %+v", c.Cluster, want)
	}
	// Flags win over the file, the environment over both; --cluster-peer
	// repeats, the environment's list is comma-separated.
	c = mustResolve(t, []string{"--config", file, "--cluster-self", "http://a:5000", "--cluster-peer", "http://b:5000", "--cluster-peer", "http://c:5000"}, nil)
	if c.Cluster.Self != "http://a:5000" || !slices.Equal(c.Cluster.Peers, []string{"http://b:5000", "http://c:5000"}) {
		t.Errorf("flags: cluster %+v", c.Cluster)
	}
	c = mustResolve(t, []string{"--config", file, "--cluster-self", "http://a:5000"}, map[string]string{
		"DOCKER_MIRROR_CLUSTER_SELF": "http://z:5000", "DOCKER_MIRROR_CLUSTER_PEER": "http://x:5000, http://y:5000",
		"DOCKER_MIRROR_CLUSTER_PEERS_DNS": "peers:5001",
	})
	if c.Cluster.Self != "http://z:5000" || !slices.Equal(c.Cluster.Peers, []string{"http://x:5000", "http://y:5000"}) || c.Cluster.PeersDNS != "peers:5001" {
		t.Errorf("environment: cluster %+v", c.Cluster)
	}
	if d := config.Default(); d.Cluster.Enabled() {
		t.Errorf("default cluster %+v is enabled", d.Cluster)
	}
}

func TestClusterBadValues(t *testing.T) {
	for _, tt := range []struct {
		yaml string
		want []string // in the one-line error
	}{
		{sharedStore + "cluster: {peers: [http://b:5000]}", []string{"cluster.self", "missing"}},
		{sharedStore + "cluster: {self: b:5000}", []string{"cluster.self", `"b:5000"`}},
		{sharedStore + "cluster: {self: ftp://b:5000}", []string{"cluster.self", `"ftp://b:5000"`}},
		{sharedStore + "cluster: {self: http://b:5000/v2}", []string{"cluster.self", `"http://b:5000/v2"`}},
		{sharedStore + "cluster: {self: http://b:99999}", []string{"cluster.self", `"http://b:99999"`}},
		{sharedStore + "cluster: {self: 'http://u:p@b:5000'}", []string{"cluster.self", `"http://xxxxx@b:5000"`}},
		{sharedStore + "cluster: {self: http://a:5000, peers: [http://b:5000, 'b:5000']}", []string{"cluster.peers", `"b:5000"`}},
		{sharedStore + "cluster: {self: http://a:5000, peers: [http://b:5000, http://b:5000]}", []string{"cluster.peers", `"http://b:5000"`, "twice"}},
		{sharedStore + "cluster: {self: http://a:5000, peers_dns: peers}", []string{"cluster.peers_dns", `"peers"`}},
		{sharedStore + "cluster: {self: http://a:5000, peers_dns: 'peers:'}", []string{"cluster.peers_dns", `"peers:"`}},
		{sharedStore + "cluster: {self: http://a:5000, peers_dns: 'http://peers:5000'}", []string{"cluster.peers_dns", `"http://peers:5000"`}},
		{"cluster: {self: http://a:5000, peers: [http://b:5000]}", []string{"cluster", "share"}},
		// A filesystem store without its rootdirectory is under each
		// replica's own --data, as the default store is.
		{"storage: {filesystem: {}}\ncluster: {self: http://a:5000, peers: [http://b:5000]}", []string{"cluster", "share", "rootdirectory"}},
		{"storage: {filesystem: {maxthreads: 100}}\ncluster: {self: http://a:5000, peers: [http://b:5000]}", []string{"cluster", "share", "rootdirectory"}},
		{sharedStore + "auth: {htpasswd: /etc/htpasswd}\ncluster: {self: http://a:5000, peers: [http://b:5000]}", []string{"cluster.secret_file", "auth.htpasswd"}},
		{sharedStore + "cluster: {self: http://a:5000, peer: [http://b:5000]}", []string{"cluster.peer", "line"}},
		// The replica serves HTTPS only: the others cannot reach it at
		// http:// (nor each other, found by peers_dns with self's scheme).
		{sharedStore + "tls_cert: /etc/tls.crt\ntls_key: /etc/tls.key\ncluster: {self: http://a:5000, peers_dns: 'peers:5000'}", []string{"cluster.self", `"http://a:5000"`, "tls_cert", "https://"}},
	} {
		c, err := config.Parse(strings.NewReader(tt.yaml))
		if err == nil {
			err = c.Validate()
		}
		if err == nil {
			t.Errorf("%q: valid, want an error", tt.yaml)
			continue
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: error spans lines: %q", tt.yaml, err)
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q does not say %s", tt.yaml, err, w)
			}
		}
	}
	if _, err := resolve(t, []string{"--cluster-self", "nonsense"}, nil); err == nil || !strings.Contains(err.Error(), `"nonsense"`) {
		t.Errorf("bad flag value: %v", err)
	}
}

func TestClusterGoodValues(t *testing.T) {
	for _, y := range []string{
		sharedStore + "cluster: {self: http://a:5000}",
		sharedStore + "cluster: {self: 'https://[fd00::1]:5000', peers: ['https://[fd00::2]:5000']}",
		sharedStore + "cluster: {self: http://a:5000, peers: [http://a:5000, http://b:5000]}",
		sharedStore + "cluster: {self: http://a:5000, peers_dns: 'mirror-peers:5000'}",
		"destination: {url: https://nexus.example/mirror}\ncluster: {self: http://a:5000, peers: [http://b:5000]}",
		sharedStore + "auth: {htpasswd: /etc/htpasswd, anonymous_pull: true}\ncluster: {self: http://a:5000, peers: [http://b:5000]}",
		sharedStore + "auth: {htpasswd: /etc/htpasswd}\ncluster: {self: http://a:5000, peers: [http://b:5000], secret_file: /run/secrets/cluster}",
	} {
		c, err := config.Parse(strings.NewReader(y))
		if err == nil {
			err = c.Validate()
		}
		if err != nil {
			t.Errorf("%q: %v", y, err)
		}
	}
	c, _ := config.Parse(strings.NewReader(sharedStore + "cluster: {self: http://a:5000, secret_file: /run/secrets/cluster}"))
	if got := c.SecretFiles()["cluster.secret_file"]; got != "/run/secrets/cluster" {
		t.Errorf("SecretFiles: cluster.secret_file = %q", got)
	}
}

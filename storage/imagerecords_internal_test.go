package storage

import (
	"testing"
	"unsafe"
)

func TestInterner(t *testing.T) {
	var in Interner
	a := in.Bytes([]byte("sha256:abc"))
	b := in.String("sha256:" + "abc")
	c := in.Digest("sha256:abc")
	if a != b || string(c) != a || unsafe.StringData(a) != unsafe.StringData(b) || unsafe.StringData(a) != unsafe.StringData(string(c)) {
		t.Errorf("not one copy: %q %q %q", a, b, c)
	}
}

func TestParseTagKeyBytes(t *testing.T) {
	for _, key := range []string{"docker.io/library/nginx:1.27", "127.0.0.1:5000/a/b:c", "docker.io/x:", "docker.io/:x", "/a:b", "nohost", "h/r"} {
		host, repo, tag, ok := ParseTagKey(key)
		bh, br, bt, bok := parseTagKeyBytes([]byte(key))
		if ok != bok || host != string(bh) || repo != string(br) || tag != string(bt) {
			t.Errorf("%q: %q %q %q %v, want %q %q %q %v", key, bh, br, bt, bok, host, repo, tag, ok)
		}
	}
}

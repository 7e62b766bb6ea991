package config

import (
	"strings"
	"testing"
)

func TestStorageRedirect(t *testing.T) {
	c, err := Parse(strings.NewReader("storage:\n  s3:\n    bucket: b\n    region: us-east-1\n  redirect: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !c.StorageRedirect {
		t.Error("storage.redirect: true not read")
	}
	if name, params := c.StorageDriver(); name != "s3aws" || params["bucket"] != "b" || len(c.Storage) != 1 {
		t.Errorf("driver %s %v (storage %v); want s3 alone", name, params, c.Storage)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}

	c, err = Parse(strings.NewReader("storage:\n  s3:\n    bucket: b\n"))
	if err != nil || c.StorageRedirect {
		t.Errorf("without the key: redirect %v, %v; want off", c.StorageRedirect, err)
	}

	c, err = Parse(strings.NewReader("storage:\n  redirect: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "storage.redirect") {
		t.Errorf("redirect on the filesystem store: Validate = %v; want an error naming storage.redirect", err)
	}

	if _, err := Parse(strings.NewReader("storage:\n  redirect: maybe\n")); err == nil || !strings.Contains(err.Error(), "storage.redirect") {
		t.Errorf("redirect: maybe: %v; want an error naming storage.redirect", err)
	}
}

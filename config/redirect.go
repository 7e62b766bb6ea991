package config

import (
	"fmt"

	"gopkg.in/yaml.v3"
)

// redirectKey is the key of the storage block that is not a driver:
// `storage: {s3: {...}, redirect: true}`.
const redirectKey = "redirect"

// takeRedirect removes the redirect key from the storage block n, whose
// other key names the driver, and sets c.StorageRedirect from it.
func takeRedirect(n *yaml.Node, c *Config) error {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind != yaml.MappingNode {
		return nil // checkBlock reports it
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value != redirectKey {
			continue
		}
		v := n.Content[i+1]
		var on bool
		if v.Kind != yaml.ScalarNode || v.Decode(&on) != nil {
			return &fileError{line: v.Line, key: "storage." + redirectKey, msg: fmt.Sprintf("invalid value %s (want true or false)", nodeText(v))}
		}
		c.StorageRedirect = on
		n.Content = append(n.Content[:i:i], n.Content[i+2:]...)
		return nil
	}
	return nil
}

// validateRedirect: redirects need a store that signs URLs for clients.
func (c Config) validateRedirect() error {
	if !c.StorageRedirect {
		return nil
	}
	if name, _ := c.StorageDriver(); name != "s3aws" || c.Destination.URL != "" {
		return fmt.Errorf("storage.redirect: only with the s3 storage driver (clients are sent presigned URLs of the bucket), got %s", name)
	}
	return nil
}

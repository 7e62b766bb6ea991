package server

import (
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/docker-mirror/docker-mirror/config"
)

// authCheckEvery is how often Serve looks whether the htpasswd file
// changed: a user removed from it loses access within that time, without
// a SIGHUP.
const authCheckEvery = 5 * time.Second

// checkAuthFile reloads the htpasswd file if it changed since it was last
// loaded; Serve runs it every authCheckEvery.
func (s *Server) checkAuthFile() {
	if s.auth == nil {
		return
	}
	reloaded, err := s.auth.ReloadIfChanged()
	s.logAuthReload(reloaded, err)
}

// reloadAuth reloads the htpasswd file (on SIGHUP).
func (s *Server) reloadAuth() {
	if s.auth == nil {
		return
	}
	err := s.auth.Reload()
	s.logAuthReload(err == nil, err)
}

func (s *Server) logAuthReload(reloaded bool, err error) {
	switch {
	case err != nil:
		s.opts.log.Error("reloading the htpasswd file; keeping the users loaded before", "file", s.auth.Path(), "error", err)
	case reloaded:
		s.opts.log.Info("reloaded the htpasswd file", "file", s.auth.Path())
	}
}

// warnReadableSecrets warns about each file holding secrets (the htpasswd
// file, password files, a config file with a password) that every user of
// the machine may read.
func warnReadableSecrets(cfg config.Config, log *slog.Logger) {
	files := cfg.SecretFiles()
	for _, key := range slices.Sorted(maps.Keys(files)) {
		fi, err := os.Stat(files[key])
		if err != nil || fi.Mode().Perm()&0o004 == 0 {
			continue
		}
		log.Warn("a file holding secrets is readable by every user of this machine: chmod o-r it",
			"key", key, "file", files[key], "mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
	}
}

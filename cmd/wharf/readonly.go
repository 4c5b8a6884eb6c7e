package main

import (
	"fmt"
	"os"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/wharf-registry/wharf/mirror"
)

// readOnlyFixedBy names what set read-only mode for the whole run (the
// command line, or a variable): a reload leaves it alone. "" when it came
// from a file (--config's read-only, or registry:2's
// storage.maintenance.readonly), which a reload reads again.
func readOnlyFixedBy(args []string) string {
	for _, a := range args {
		if a == "--read-only" || a == "-read-only" || strings.HasPrefix(a, "--read-only=") || strings.HasPrefix(a, "-read-only=") {
			return "--read-only on the command line"
		}
	}
	for _, v := range []string{"WHARF_READ_ONLY", "REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED"} {
		if os.Getenv(v) != "" {
			return v
		}
	}
	return ""
}

// readOnlyFromFiles reads read-only mode from --config (which wins, as at
// start) or registry:2's config.yml; from is the file that said, "" when
// neither does (off).
func readOnlyFromFiles(configFile, registryConfig string) (on bool, from string, err error) {
	if configFile != "" {
		raw, err := os.ReadFile(configFile)
		if err != nil {
			return false, "", err
		}
		var doc map[string]any
		if err := yaml.Unmarshal(raw, &doc); err != nil {
			return false, "", fmt.Errorf("%s: %w", configFile, err)
		}
		if v, ok := doc["read-only"]; ok {
			b, isBool := v.(bool)
			if !isBool {
				return false, "", fmt.Errorf("%s: read-only: %v is not true or false", configFile, v)
			}
			return b, configFile, nil
		}
	}
	if registryConfig != "" {
		r2, err := readRegistry2(nil, registryConfig)
		if err != nil {
			return false, "", err
		}
		if v, ok := r2.flags["read-only"]; ok {
			return v == "true", registryConfig, nil
		}
	}
	return false, "", nil
}

// reloadReadOnly switches read-only mode as the files now say (SIGHUP),
// unless the command line or a variable fixed it.
func reloadReadOnly(cfg serveConfig, reg *mirror.Server) {
	if cfg.readOnlyFixedBy != "" {
		return
	}
	on, from, err := readOnlyFromFiles(cfg.configFile, cfg.registryConfig)
	switch {
	case err != nil:
		cfg.log.Error("reload: keeping read-only mode as it is", "read_only", reg.ReadOnly(), "err", err)
	case on != reg.ReadOnly():
		reg.SetReadOnly(on)
		if on {
			cfg.log.Warn("reload: read-only mode on: pulls only; pushes, manifest writes and deletes get 405, garbage collection and eviction pause", "from", from)
		} else {
			cfg.log.Info("reload: read-only mode off: pushes and deletes are taken again", "from", from)
		}
	}
}

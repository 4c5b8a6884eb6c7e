// Package regname names registries: Docker Hub's name and its aliases. It
// imports nothing, so that policy (which maps request names to registries)
// links none of upstream's network stack.
package regname

import "strings"

// DockerHub is the name Docker Hub content is known by.
const DockerHub = "docker.io"

// Normalize maps Docker Hub's aliases to "docker.io" and lowercases
// other registry names.
func Normalize(name string) string {
	switch strings.ToLower(name) {
	case "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com", "docker.io":
		return DockerHub
	}
	return strings.ToLower(name)
}

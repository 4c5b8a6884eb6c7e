// Package upstream talks to remote registries through containerd's remotes
// (core/remotes/docker): host mapping, the bearer-token flow (one token
// fetch per scope, cached until expiry), credentials sent only to a
// registry's auth realm, redirects followed without credentials. It
// remembers which registries are down or rate limited, answers for them at
// once instead of after a timeout, and probes them in the background. It
// never verifies blob bytes: the cache does that as it writes them.
package upstream

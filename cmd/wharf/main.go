// Command wharf is the Wharf registry mirror appliance.
package main

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "wharf:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	serveFlags := append([]cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "YAML file with any of these options (keys are the flag names)", EnvVars: []string{"WHARF_CONFIG"}},
		altsrc.NewStringFlag(&cli.StringFlag{Name: "addr", Value: ":5000", Usage: "listen address", EnvVars: []string{"WHARF_ADDR"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "data", Value: "./wharf-data", Usage: "data directory (blobs and index)", EnvVars: []string{"WHARF_DATA"}}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "allow-delete", Usage: "allow manifest, tag and blob deletes", EnvVars: []string{"WHARF_ALLOW_DELETE"}}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "response-header", Usage: "add `NAME: VALUE` to every response (repeatable; CORS for a registry UI), except headers Wharf sets itself; registry:2's http.headers", EnvVars: []string{"WHARF_RESPONSE_HEADER"}}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "read-only", Usage: "serve pulls only: pushes, manifest writes and deletes get 405, garbage collection and eviction pause (mirror fills go on unless --offline); registry:2's storage.maintenance.readonly", EnvVars: []string{"WHARF_READ_ONLY"}}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "sendfile", Usage: "serve blobs with sendfile(2) instead of 512 KiB buffered copies (measure with internal/bench)", EnvVars: []string{"WHARF_SENDFILE"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "blob-store", Usage: "keep committed blobs in an S3-compatible bucket: s3://bucket[/prefix]?endpoint=host:port[&region=R][&insecure=true][&part-size=BYTES], credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; the data directory keeps the index, uploads and a local copy (default: files under --data)", EnvVars: []string{"WHARF_BLOB_STORE"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "index", Usage: "keep the index in etcd, shared by the nodes of a cluster: etcd://host:2379[,host:2379…][/prefix][?ca=FILE&cert=FILE&key=FILE&timeout=5s&max-txn-ops=128], user and password from ETCD_USERNAME and ETCD_PASSWORD; needs --blob-store (default: Badger under --data)", EnvVars: []string{"WHARF_INDEX"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "blob-store-access-key", Usage: "the bucket's access key (better set in the environment or the --config file than on the command line)", EnvVars: []string{"AWS_ACCESS_KEY_ID"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "blob-store-secret-key", Usage: "the bucket's secret key (environment or --config file)", EnvVars: []string{"AWS_SECRET_ACCESS_KEY"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "advertise-url", Usage: "with --index: the URL the cluster's other nodes reach this one at, e.g. http://10.0.0.5:5000 (default: the listening address, or this host's name and port)", EnvVars: []string{"WHARF_ADVERTISE_URL"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "debug-addr", Usage: "serve Go's profiler at /debug/pprof/ (and the metrics) on this address, e.g. 127.0.0.1:5001 (empty: off)", EnvVars: []string{"WHARF_DEBUG_ADDR"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "metrics-addr", Usage: "serve Prometheus metrics on this address at /metrics (empty: off)", EnvVars: []string{"WHARF_METRICS_ADDR"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error (debug logs every request)", EnvVars: []string{"WHARF_LOG_LEVEL"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json", EnvVars: []string{"WHARF_LOG_FORMAT"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "shutdown-timeout", Value: 30e9, Usage: "how long SIGTERM waits for in-flight requests", EnvVars: []string{"WHARF_SHUTDOWN_TIMEOUT"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "tls-cert", Usage: "serve HTTPS with this certificate (PEM; reloaded on SIGHUP and on change)", EnvVars: []string{"WHARF_TLS_CERT"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "tls-key", Usage: "private key of --tls-cert (PEM)", EnvVars: []string{"WHARF_TLS_KEY"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "tls-client-ca", Usage: "accept client certificates signed by this CA; their CN signs in as a user", EnvVars: []string{"WHARF_TLS_CLIENT_CA"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "htpasswd", Usage: "users file (bcrypt htpasswd); without users everything is allowed", EnvVars: []string{"WHARF_HTPASSWD"}}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "mirror", Value: true, Usage: "pull-through mirror for names that were not pushed here (false: private registry only)", EnvVars: []string{"WHARF_MIRROR"}}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "upstream", Value: cli.NewStringSlice("docker.io"), Usage: "registry that may be mirrored, as NAME or NAME=URL to override its endpoint (repeatable; the allow-list)", EnvVars: []string{"WHARF_UPSTREAM"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "tag-ttl", Value: 10 * 60e9, Usage: "serve a mirrored tag, and a mirrored repository's tag list and referrers, this long without asking upstream; then revalidate (0: every pull asks upstream, as registry:2's proxy)", EnvVars: []string{"WHARF_TAG_TTL"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "miss-ttl", Value: 60e9, Usage: "remember upstream's \"no such name, tag or blob\" this long (0: never); a push into the repository forgets it", EnvVars: []string{"WHARF_MISS_TTL"}}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "offline", Usage: "serve only what is cached; never contact upstream", EnvVars: []string{"WHARF_OFFLINE"}}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "upstream-conns", Value: 32, Usage: "concurrent blob downloads from upstream, all registries together", EnvVars: []string{"WHARF_UPSTREAM_CONNS"}}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "upstream-segments", Value: 4, Usage: "a large blob whose upstream connection is slow (under 32 MiB/s) is fetched with up to this many more ranged GETs in parallel, 2 MiB each (16 MiB of buffers over all blobs); 0: one connection per blob", EnvVars: []string{"WHARF_UPSTREAM_SEGMENTS"}}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "prefetch-parallel", Value: 16, Usage: "blobs of one manifest fetched at once ahead of the client (the upstream connection limit, 32, bounds all of them)", EnvVars: []string{"WHARF_PREFETCH_PARALLEL"}}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "prefetch-platform", Usage: "when an index is fetched, also fetch this platform's image, e.g. linux/arm64 (repeatable)", EnvVars: []string{"WHARF_PREFETCH_PLATFORM"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "header-timeout", Value: 30e9, Usage: "a client must send its request headers within this", EnvVars: []string{"WHARF_HEADER_TIMEOUT"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "client-timeout", Value: 60e9, Usage: "a client that reads nothing of a response, or sends nothing of a request body, for this long is cut off", EnvVars: []string{"WHARF_CLIENT_TIMEOUT"}}),
		&cli.StringFlag{Name: "registry-config", Usage: "registry:2's config.yml: the settings Wharf understands are used, any other stops the start (see README)", EnvVars: []string{"WHARF_REGISTRY_CONFIG"}},
		altsrc.NewStringFlag(&cli.StringFlag{Name: "token-key-file", Usage: "read the token signing key from this file (the same file on every node behind one load balancer; instead of --secret)", EnvVars: []string{"WHARF_TOKEN_KEY_FILE"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "secret", Usage: "signs tokens, so that Wharf nodes with the same secret accept each other's (registry:2's http.secret; default: random per process)", EnvVars: []string{"WHARF_SECRET"}}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "trusted-proxy", Usage: "a reverse proxy (CIDR or address) whose X-Forwarded-For, -Proto and -Host are believed (repeatable)", EnvVars: []string{"WHARF_TRUSTED_PROXY"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "public-url", Usage: "the URL clients reach this registry at, e.g. https://registry.example (for the token realm behind a proxy)", EnvVars: []string{"WHARF_PUBLIC_URL"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "idle-timeout", Value: 120e9, Usage: "idle keep-alive connections are closed after this", EnvVars: []string{"WHARF_IDLE_TIMEOUT"}}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "max-uploads", Value: 64, Usage: "upload requests running at once, all clients (0: no limit)", EnvVars: []string{"WHARF_MAX_UPLOADS"}}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "max-uploads-per-client", Value: 16, Usage: "upload requests running at once from one address (0: no limit)", EnvVars: []string{"WHARF_MAX_UPLOADS_PER_CLIENT"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "local-cache-size", Value: "50%", Usage: "with --blob-store: bytes (20G) or a share of the data directory's filesystem that the local copies of the bucket's blobs may take; the least recently used go first (they are fetched again when read), and before any mirrored image is evicted when the disk runs short", EnvVars: []string{"WHARF_LOCAL_CACHE_SIZE"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "max-size", Usage: "quota for the blob store: bytes (50G, 500M) or a share of the filesystem (80%); above 95% of it the least recently used mirrored images are evicted down to 85%", EnvVars: []string{"WHARF_MAX_SIZE"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "retention", Usage: "mirrored tags unused this long are evicted even under the quota (0: keep)", EnvVars: []string{"WHARF_RETENTION"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "evict-interval", Value: 30e9, Usage: "how often the quota and retention are checked", EnvVars: []string{"WHARF_EVICT_INTERVAL"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "retention-policies-interval", Value: time.Hour, Usage: "apply the config file's retention-policies this often (0: only by `wharf retention` and the API)", EnvVars: []string{"WHARF_RETENTION_POLICIES_INTERVAL"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "gc-interval", Value: 6 * 3600e9, Usage: "run garbage collection this often (0: never; `wharf gc` runs it by hand)", EnvVars: []string{"WHARF_GC_INTERVAL"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "gc-grace", Value: 3600e9, Usage: "garbage collection spares manifests and blobs younger than this", EnvVars: []string{"WHARF_GC_GRACE"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "min-free", Usage: "free space kept on the data directory's filesystem for the index: blob writes get 507 below it (bytes, K, M, G or a percentage; default 2%, 16M to 1G)", EnvVars: []string{"WHARF_MIN_FREE"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "upload-ttl", Value: 24 * 3600e9, Usage: "idle upload sessions older than this are dropped (at start-up and every few minutes)", EnvVars: []string{"WHARF_UPLOAD_TTL"}}),
	}, append(append(notifyFlags, ldapFlags...), oidcFlags...)...)
	return &cli.App{
		Name:    "wharf",
		Usage:   "container registry mirror appliance",
		Version: version,
		Commands: []*cli.Command{
			{
				Name:  "serve",
				Usage: "run the registry",
				Flags: serveFlags,
				Before: func(c *cli.Context) error {
					if err := altsrc.InitInputSourceWithContext(serveFlags, altsrc.NewYamlSourceFromFlagFunc("config"))(c); err != nil {
						return err
					}
					r2, err := applyRegistry2(c)
					if err != nil {
						return err
					}
					c.App.Metadata = map[string]any{"registry2": r2}
					return nil
				},
				Action: func(c *cli.Context) error {
					cfg, err := serveConfigFrom(c)
					if err != nil {
						return err
					}
					return serve(c.Context, cfg)
				},
			},
			prefetchCommand,
			userCommand,
			gcCommand,
			retentionCommand,
			installCommand,
			fsckCommand,
			duCommand,
			lsCommand,
			rmCommand,
			tokenCommand,
			healthCommand,
			importCommand,
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					fmt.Fprintf(c.App.Writer, "wharf %s (%s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
					return nil
				},
			},
		},
	}
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: %q is neither text nor json", format)
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cache/index/etcdindex"
	"github.com/wharf-registry/wharf/cache/stores"
	"github.com/wharf-registry/wharf/policy"
)

// Operator commands open the data directory themselves; Badger's lock makes
// them refuse while a server holds it.
//
// On a cluster (--index and --blob-store) they work on the shared index and
// bucket while the nodes serve, from a scratch data directory of their own
// (the default there): gc takes the cluster's collector lock.
var dataFlags = []cli.Flag{
	&cli.StringFlag{Name: "data", Value: "./wharf-data", Usage: "data directory (with --index: a scratch directory of this command's, a temporary one by default)", EnvVars: []string{"WHARF_DATA"}},
	&cli.StringFlag{Name: "config", Usage: "YAML config (its data key is used when --data is not given)", EnvVars: []string{"WHARF_CONFIG"}},
	&cli.StringFlag{Name: "index", Usage: "a cluster's etcd index, as for serve (with --blob-store)", EnvVars: []string{"WHARF_INDEX"}},
	&cli.StringFlag{Name: "blob-store", Usage: "the cluster's bucket, as for serve", EnvVars: []string{"WHARF_BLOB_STORE"}},
	&cli.StringFlag{Name: "blob-store-access-key", Usage: "the bucket's access key", EnvVars: []string{"AWS_ACCESS_KEY_ID"}},
	&cli.StringFlag{Name: "blob-store-secret-key", Usage: "the bucket's secret key", EnvVars: []string{"AWS_SECRET_ACCESS_KEY"}},
}

func openForMaintenance(c *cli.Context) (*cache.Store, error) {
	dir := c.String("data")
	if v, ok := registry2Volume(dir); ok {
		dir = v
	}
	if !c.IsSet("data") && c.String("config") != "" {
		if d, err := configString(c.String("config"), "data"); err == nil && d != "" {
			dir = d
		}
	}
	opts := cache.Options{Dir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	s3, err := blobStore(c)
	if err != nil {
		return nil, err
	}
	if s3 != nil {
		opts.OpenBlobs = stores.S3(*s3)
	}
	if raw := c.String("index"); raw != "" {
		eo, err := sharedIndex(raw, s3 != nil, opts.Logger)
		if err != nil {
			return nil, err
		}
		if !c.IsSet("data") {
			if opts.Dir, err = os.MkdirTemp("", "wharf-maintenance-"); err != nil {
				return nil, err
			}
			c.Context = context.WithValue(c.Context, scratchKey{}, opts.Dir)
		}
		ix, err := etcdindex.Open(*eo)
		if err != nil {
			return nil, err
		}
		opts.Index = ix
	}
	st, err := stores.Open(opts)
	if errors.Is(err, cache.ErrInUse) {
		return nil, fmt.Errorf("%s is in use, probably by a running wharf serve: stop it first", dir)
	}
	return st, err
}

// scratchKey holds the temporary data directory a cluster command made.
type scratchKey struct{}

// closeMaintenance closes st and removes the scratch directory, if any.
func closeMaintenance(c *cli.Context, st *cache.Store) {
	st.Close()
	if dir, ok := c.Context.Value(scratchKey{}).(string); ok {
		os.RemoveAll(dir)
	}
}

var gcCommand = &cli.Command{
	Name:  "gc",
	Usage: "remove untagged manifests and content nothing references (the server also does this on a schedule)",
	Flags: append([]cli.Flag{
		&cli.BoolFlag{Name: "dry-run", Usage: "print what would be freed; change nothing"},
		&cli.DurationFlag{Name: "grace", Value: time.Hour, Usage: "spare manifests and blobs younger than this"},
	}, append(dataFlags, serverFlags...)...),
	Action: func(c *cli.Context) error {
		if c.String("server") != "" {
			return serverGC(c)
		}
		st, err := openForMaintenance(c)
		if err != nil {
			return err
		}
		defer closeMaintenance(c, st)
		rep, err := st.Maintenance().GC(cache.GCOptions{DryRun: c.Bool("dry-run"), Grace: c.Duration("grace")})
		if err != nil {
			return err
		}
		for _, l := range rep.Items {
			fmt.Fprintln(c.App.Writer, l)
		}
		verb := "freed"
		if c.Bool("dry-run") {
			verb = "would free"
		}
		fmt.Fprintf(c.App.Writer, "%s %s: %d manifests, %d links, %d blobs, %d orphan files\n",
			verb, humanBytes(rep.Bytes), rep.Manifests, rep.Links, rep.Blobs, rep.Orphans)
		return nil
	},
}

var fsckCommand = &cli.Command{
	Name:  "fsck",
	Usage: "rehash every blob and check the index against the files",
	Flags: append([]cli.Flag{&cli.BoolFlag{Name: "repair", Usage: "quarantine corrupt blobs and remove index entries that need missing or corrupt content"}}, dataFlags...),
	Action: func(c *cli.Context) error {
		st, err := openForMaintenance(c)
		if err != nil {
			return err
		}
		defer closeMaintenance(c, st)
		rep, err := st.Maintenance().Fsck(c.Bool("repair"))
		if err != nil {
			return err
		}
		for _, p := range rep.Problems {
			fmt.Fprintln(c.App.Writer, p)
		}
		fmt.Fprintf(c.App.Writer, "checked %d blobs, %s; %d problems; %d orphan files (left by crashes; gc removes them)",
			rep.Blobs, humanBytes(rep.Bytes), len(rep.Problems), rep.Orphans)
		if c.Bool("repair") {
			fmt.Fprintf(c.App.Writer, ", %d index entries and files repaired", rep.Repaired)
		}
		fmt.Fprintln(c.App.Writer)
		if !rep.Clean() && !c.Bool("repair") {
			return errors.New("problems found (run with --repair to fix them)")
		}
		return nil
	},
}

var duCommand = &cli.Command{
	Name:  "du",
	Usage: "disk usage by repository, mirrored and private",
	Flags: append(dataFlags, serverFlags...),
	Action: func(c *cli.Context) error {
		if c.String("server") != "" {
			return serverDU(c)
		}
		st, err := openForMaintenance(c)
		if err != nil {
			return err
		}
		defer closeMaintenance(c, st)
		usage, total, err := st.Maintenance().Usage()
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "BYTES\tTAGS\tMANIFESTS\tBLOBS\tKIND\tREPOSITORY\t")
		var mirrored, private int64
		for _, u := range usage {
			kind := "private"
			if u.Origin.Mirrored() {
				kind, mirrored = "mirrored:"+u.Origin.Registry, mirrored+u.Bytes
			} else {
				private += u.Bytes
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t\n", humanBytes(u.Bytes), u.Tags, u.Manifests, u.Blobs, kind, u.Repo)
		}
		tw.Flush()
		fmt.Fprintf(c.App.Writer, "mirrored %s, private %s (shared content counted in each repository); blob store %s\n",
			humanBytes(mirrored), humanBytes(private), humanBytes(total))
		return nil
	},
}

func humanBytes(n int64) string { return policy.FormatBytes(n) }

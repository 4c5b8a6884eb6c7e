package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/wharf-registry/wharf/mirror"
	"github.com/wharf-registry/wharf/mirror/admin"
)

// retentionCommand is `wharf retention [--dry-run]`: apply the config
// file's retention policies now, against a running server (which also
// applies them every --retention-policies-interval).
var retentionCommand = &cli.Command{
	Name:  "retention",
	Usage: "apply the retention policies now against a running server (--dry-run: list what would go)",
	Flags: append([]cli.Flag{&cli.BoolFlag{Name: "dry-run", Usage: "list what would be removed; change nothing"}}, serverFlags...),
	Action: func(c *cli.Context) error {
		a, err := newAPIClient(c)
		if err != nil {
			return err
		}
		path := "/api/v1/retention"
		if c.Bool("dry-run") {
			path += "?dry-run=true"
		}
		var rep admin.RetentionReport
		if err := a.call(http.MethodPost, path, &rep); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "REPOSITORY\tTAG\tDIGEST\tPUSHED\tLAST PULLED\tFREES\tPOLICY")
		for _, r := range rep.Removals {
			pulled := "never"
			if !r.LastPulled.IsZero() {
				pulled = r.LastPulled.Format(time.DateTime)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Repo, r.Tag, r.Digest, r.Pushed.Format(time.DateTime), pulled, humanBytes(r.Bytes), r.Policy)
		}
		tw.Flush()
		verb := "removed"
		if rep.DryRun {
			verb = "would remove"
		}
		fmt.Fprintf(c.App.Writer, "%s %d tags (kept %d), freeing %s once collected\n", verb, len(rep.Removals), rep.Kept, humanBytes(rep.Bytes))
		return nil
	},
}

// applyRetention runs the retention policies (the scheduler's), and logs
// what they removed.
func applyRetention(ctx context.Context, reg *mirror.Server, log *slog.Logger) {
	if ctx.Err() != nil || reg.ReadOnly() {
		return
	}
	start := time.Now()
	rep, err := reg.ApplyRetention()
	switch {
	case errors.Is(err, admin.ErrRetentionElsewhere):
	case err != nil:
		log.Warn("retention policies", "err", err, "removed", len(rep.Removals))
	case len(rep.Removals) > 0:
		log.Info("retention policies applied: tags removed (each audited); what only they held is collected within seconds",
			"removed", len(rep.Removals), "kept", rep.Kept, "frees_bytes", rep.Bytes, "took", time.Since(start))
	}
}

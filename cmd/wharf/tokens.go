package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/wharf-registry/wharf/mirror/admin"
)

// tokenCommand manages access tokens on a running server (its admin API):
// tokens for CI robots and for people's `docker login`.
var tokenCommand = &cli.Command{
	Name:  "token",
	Usage: "create, list and revoke access tokens on a running server (docker login -u NAME -p SECRET)",
	Subcommands: []*cli.Command{
		{
			Name:      "create",
			Usage:     "create a token owned by --user; the secret is printed once, on the last line",
			ArgsUsage: "NAME",
			Flags: append([]cli.Flag{
				&cli.StringFlag{Name: "name", Usage: "the token's name (what docker login -u takes); or the first argument"},
				&cli.StringSliceFlag{Name: "repos", Usage: "repositories it may touch, as the rules' patterns (team/**; repeatable or comma-separated)", Required: true},
				&cli.StringSliceFlag{Name: "actions", Value: cli.NewStringSlice("pull"), Usage: "pull, push, delete, admin (repeatable or comma-separated)"},
				&cli.StringFlag{Name: "expires", Usage: "lifetime: 90d, 12h (default: never)"},
			}, serverFlags...),
			Action: func(c *cli.Context) error {
				name := c.String("name")
				if name == "" {
					name = c.Args().First()
				}
				if name == "" {
					return errors.New("name the token (--name or the first argument)")
				}
				a, err := newAPIClient(c)
				if err != nil {
					return err
				}
				req := admin.TokenRequest{Name: name, Repos: splitList(c.StringSlice("repos")), Actions: splitList(c.StringSlice("actions")), Expires: c.String("expires")}
				var ti admin.TokenInfo
				if err := a.send(http.MethodPost, "/api/v1/tokens", req, &ti); err != nil {
					return err
				}
				expires := "never"
				if ti.Expires != nil {
					expires = ti.Expires.Format(time.RFC3339)
				}
				fmt.Fprintf(c.App.Writer, "token %s, owner %s: %s on %s, expires %s\n", ti.Name, ti.Owner, strings.Join(ti.Actions, ","), strings.Join(ti.Repos, ","), expires)
				fmt.Fprintf(c.App.Writer, "sign in with: docker login -u %s --password-stdin REGISTRY (the secret is shown once, below)\n", ti.Name)
				fmt.Fprintln(c.App.Writer, ti.Secret)
				return nil
			},
		},
		{
			Name:  "ls",
			Usage: "list tokens: yours, or every one for a registry admin",
			Flags: serverFlags,
			Action: func(c *cli.Context) error {
				a, err := newAPIClient(c)
				if err != nil {
					return err
				}
				var list []admin.TokenInfo
				if err := a.call(http.MethodGet, "/api/v1/tokens", &list); err != nil {
					return err
				}
				tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
				defer tw.Flush()
				fmt.Fprintln(tw, "NAME\tOWNER\tSCOPE\tCREATED\tEXPIRES\tLAST USED")
				for _, t := range list {
					fmt.Fprintf(tw, "%s\t%s\t%s on %s\t%s\t%s\t%s\n", t.Name, t.Owner, strings.Join(t.Actions, ","), strings.Join(t.Repos, ","),
						t.Created.Format(time.RFC3339), timeOrDash(t.Expires, "never"), timeOrDash(t.LastUsed, "-"))
				}
				return nil
			},
		},
		{
			Name:      "revoke",
			Usage:     "revoke tokens (yours, or any for a registry admin): refused at once on every node",
			ArgsUsage: "NAME ...",
			Flags:     serverFlags,
			Action: func(c *cli.Context) error {
				if c.NArg() == 0 {
					return errors.New("name at least one token")
				}
				a, err := newAPIClient(c)
				if err != nil {
					return err
				}
				for _, name := range c.Args().Slice() {
					if err := a.call(http.MethodDelete, "/api/v1/tokens/"+name, nil); err != nil {
						return fmt.Errorf("%s: %w", name, err)
					}
					fmt.Fprintf(c.App.Writer, "revoked %s\n", name)
				}
				return nil
			},
		},
	},
}

// splitList flattens repeated and comma-separated values.
func splitList(vs []string) []string {
	var out []string
	for _, v := range vs {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

func timeOrDash(t *time.Time, none string) string {
	if t == nil {
		return none
	}
	return t.Format(time.RFC3339)
}

// tokenSecret is the key material tokens are signed with: --secret, or the
// contents of --token-key-file (never both). Nodes given the same one
// accept each other's tokens; with neither, each process draws its own.
func tokenSecret(secret, file string, log *slog.Logger) (string, error) {
	if file == "" {
		return secret, nil
	}
	if secret != "" {
		return "", errors.New("--secret and --token-key-file both given: use one")
	}
	fi, err := os.Stat(file)
	if err != nil {
		return "", fmt.Errorf("--token-key-file: %w (create one with: head -c 32 /dev/urandom | base64 > %s; chmod 600 %s)", err, file, file)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--token-key-file: %w", err)
	}
	key := strings.TrimSpace(string(b))
	if len(key) < 16 {
		return "", fmt.Errorf("--token-key-file %s: %d characters; want at least 16 (head -c 32 /dev/urandom | base64)", file, len(key))
	}
	if fi.Mode().Perm()&0o077 != 0 {
		log.Warn("the token key file is readable by other users: anyone who reads it can sign tokens", "file", file, "mode", fi.Mode().Perm().String())
	}
	return key, nil
}

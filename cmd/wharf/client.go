package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"github.com/wharf-registry/wharf/mirror/admin"
)

// The operator commands that talk to a running server, through its admin
// API (/api/v1/): nobody has to stop the service to look or clean.
var serverFlags = []cli.Flag{
	&cli.StringFlag{Name: "server", Usage: "a running Wharf's URL, e.g. http://wharf:5000 (its admin API)", EnvVars: []string{"WHARF_SERVER"}},
	&cli.StringFlag{Name: "user", Usage: "sign in as this user (password from WHARF_PASSWORD, or --password-stdin)", EnvVars: []string{"WHARF_USER"}},
	&cli.BoolFlag{Name: "password-stdin", Usage: "read the password from the first line of standard input"},
}

type apiClient struct {
	base, user, pass string
	http             *http.Client
}

func newAPIClient(c *cli.Context) (*apiClient, error) {
	base := strings.TrimSuffix(c.String("server"), "/")
	if base == "" {
		return nil, errors.New("--server URL is required")
	}
	if u, err := url.Parse(base); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--server %q: want http(s)://host:port", base)
	}
	a := &apiClient{base: base, user: c.String("user"), pass: os.Getenv("WHARF_PASSWORD"), http: &http.Client{Timeout: 10 * time.Minute}}
	if c.Bool("password-stdin") {
		line, err := bufio.NewReader(c.App.Reader).ReadString('\n')
		if err != nil && line == "" {
			return nil, fmt.Errorf("reading the password from standard input: %w", err)
		}
		a.pass = strings.TrimRight(line, "\r\n")
	}
	return a, nil
}

// call sends method path and decodes a JSON answer into out; an OCI error
// becomes an error with its message.
func (a *apiClient) call(method, path string, out any) error { return a.send(method, path, nil, out) }

// send is call with in, when not nil, as the JSON body.
func (a *apiClient) send(method, path string, in, out any) error {
	var reqBody io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return err
		}
		reqBody = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, a.base+path, reqBody)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.user != "" {
		req.SetBasicAuth(a.user, a.pass)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Errors []struct{ Code, Message string }
		}
		if json.Unmarshal(body, &e) == nil && len(e.Errors) > 0 {
			msg := e.Errors[0].Message
			if resp.StatusCode == http.StatusUnauthorized && a.user == "" {
				msg += " (give --user)"
			}
			return fmt.Errorf("%s: %s", resp.Status, msg)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(body, out)
}

type apiRepo struct {
	Name, Origin, Registry string
	Bytes, Pulls           int64
	Blobs, Manifests, Tags int
	LastPulled             string `json:"last_pulled"`
}

var lsCommand = &cli.Command{
	Name:      "ls",
	Usage:     "list a running server's repositories, or one repository's tags",
	ArgsUsage: "[REPOSITORY]",
	Flags:     serverFlags,
	Action: func(c *cli.Context) error {
		a, err := newAPIClient(c)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
		defer tw.Flush()
		if repo := c.Args().First(); repo != "" {
			var out struct {
				Tags []struct {
					Tag, Digest, Pushed string
					Bytes, Pulls        int64
					Platforms           []string
					LastPulled          string `json:"last_pulled"`
				}
			}
			if err := a.call(http.MethodGet, "/api/v1/repositories/"+repo+"/tags", &out); err != nil {
				return err
			}
			fmt.Fprintln(tw, "TAG\tDIGEST\tSIZE\tPLATFORMS\tPUSHED\tPULLS\tLAST PULLED")
			for _, t := range out.Tags {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", t.Tag, t.Digest, humanBytes(t.Bytes), strings.Join(t.Platforms, ","), dash(t.Pushed), t.Pulls, dash(t.LastPulled))
			}
			return nil
		}
		var out struct{ Repositories []apiRepo }
		if err := a.call(http.MethodGet, "/api/v1/repositories", &out); err != nil {
			return err
		}
		fmt.Fprintln(tw, "REPOSITORY\tORIGIN\tTAGS\tSIZE\tPULLS\tLAST PULLED")
		for _, r := range out.Repositories {
			origin := r.Origin
			if r.Registry != "" {
				origin += ":" + r.Registry
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\n", r.Name, origin, r.Tags, humanBytes(r.Bytes), r.Pulls, dash(r.LastPulled))
		}
		return nil
	},
}

// dash is s, or "-" for nothing.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// splitImageRef splits REPO:TAG or REPO@DIGEST (a registry host's port in
// REPO is not a tag: the tag follows the last slash).
func splitImageRef(s string) (repo, path string, err error) {
	if r, d, ok := strings.Cut(s, "@"); ok {
		return r, "/manifests/" + d, nil
	}
	slash := strings.LastIndex(s, "/")
	if i := strings.LastIndex(s, ":"); i > slash && i > 0 {
		return s[:i], "/tags/" + s[i+1:], nil
	}
	return "", "", fmt.Errorf("%q: want REPOSITORY:TAG or REPOSITORY@DIGEST", s)
}

var rmCommand = &cli.Command{
	Name:      "rm",
	Usage:     "delete a tag or a manifest on a running server; its space comes back within about 10 seconds",
	ArgsUsage: "REPOSITORY:TAG|REPOSITORY@DIGEST ...",
	Flags:     serverFlags,
	Action: func(c *cli.Context) error {
		if c.NArg() == 0 {
			return errors.New("name at least one REPOSITORY:TAG or REPOSITORY@DIGEST")
		}
		a, err := newAPIClient(c)
		if err != nil {
			return err
		}
		for _, arg := range c.Args().Slice() {
			repo, path, err := splitImageRef(arg)
			if err != nil {
				return err
			}
			if err := a.call(http.MethodDelete, "/api/v1/repositories/"+repo+path, nil); err != nil {
				return fmt.Errorf("%s: %w", arg, err)
			}
			fmt.Fprintf(c.App.Writer, "deleted %s\n", arg)
		}
		return nil
	},
}

// serverGC is `wharf gc --server`.
func serverGC(c *cli.Context) error {
	a, err := newAPIClient(c)
	if err != nil {
		return err
	}
	var rep struct {
		DryRun                  bool `json:"dry_run"`
		Bytes                   int64
		Manifests, Links, Blobs int
		Items                   []string
	}
	path := "/api/v1/gc"
	if c.Bool("dry-run") {
		path += "?dry_run=true"
	}
	if err := a.call(http.MethodPost, path, &rep); err != nil {
		return err
	}
	for _, l := range rep.Items {
		fmt.Fprintln(c.App.Writer, l)
	}
	verb := "freed"
	if rep.DryRun {
		verb = "would free"
	}
	fmt.Fprintf(c.App.Writer, "%s %s: %d manifests, %d links, %d blobs\n", verb, humanBytes(rep.Bytes), rep.Manifests, rep.Links, rep.Blobs)
	return nil
}

// serverDU is `wharf du --server`.
func serverDU(c *cli.Context) error {
	a, err := newAPIClient(c)
	if err != nil {
		return err
	}
	var u struct {
		Total        int64 `json:"total_bytes"`
		Quota        int64 `json:"quota_bytes"`
		Repositories []apiRepo
		Quotas       []admin.QuotaInfo
	}
	if err := a.call(http.MethodGet, "/api/v1/usage", &u); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "BYTES\tTAGS\tMANIFESTS\tBLOBS\tKIND\tREPOSITORY\t")
	for _, r := range u.Repositories {
		kind := "private"
		if r.Origin == "mirrored" {
			kind = "mirrored:" + r.Registry
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t\n", humanBytes(r.Bytes), r.Tags, r.Manifests, r.Blobs, kind, r.Name)
	}
	tw.Flush()
	quota := "no quota"
	if u.Quota > 0 {
		quota = "quota " + humanBytes(u.Quota)
	}
	fmt.Fprintf(c.App.Writer, "blob store %s (%s)\n", humanBytes(u.Total), quota)
	for _, q := range u.Quotas {
		fmt.Fprintf(c.App.Writer, "%s: %s used of %s (%.0f%%)\n", q.Quota, humanBytes(q.Used), humanBytes(q.Max), 100*float64(q.Used)/float64(q.Max))
	}
	return nil
}

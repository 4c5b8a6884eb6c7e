package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"github.com/wharf-registry/wharf/policy/directory"
)

// ldapFlags are serve's flags for signing people in from the company
// directory (OpenLDAP, Active Directory).
var ldapFlags = []cli.Flag{
	altsrc.NewStringFlag(&cli.StringFlag{Name: "ldap-url", Usage: "sign people in from this directory too: ldap://host:389 or ldaps://host:636 (htpasswd users win on a name clash)", EnvVars: []string{"WHARF_LDAP_URL"}}),
	altsrc.NewBoolFlag(&cli.BoolFlag{Name: "ldap-starttls", Usage: "upgrade ldap:// with StartTLS", EnvVars: []string{"WHARF_LDAP_STARTTLS"}}),
	altsrc.NewStringFlag(&cli.StringFlag{Name: "ldap-ca-file", Usage: "the directory's CA certificate (PEM; default: the system's)", EnvVars: []string{"WHARF_LDAP_CA_FILE"}}),
	altsrc.NewStringFlag(&cli.StringFlag{Name: "ldap-bind-dn", Usage: "the search account's DN (default: an anonymous search)", EnvVars: []string{"WHARF_LDAP_BIND_DN"}}),
	altsrc.NewStringFlag(&cli.StringFlag{Name: "ldap-bind-password-file", Usage: "a file holding the search account's password (first line)", EnvVars: []string{"WHARF_LDAP_BIND_PASSWORD_FILE"}}),
	altsrc.NewStringFlag(&cli.StringFlag{Name: "ldap-user-base", Usage: "where users are searched, e.g. ou=people,dc=example,dc=com", EnvVars: []string{"WHARF_LDAP_USER_BASE"}}),
	altsrc.NewStringFlag(&cli.StringFlag{Name: "ldap-user-filter", Value: "(uid=%s)", Usage: "finds a user by name (%s); Active Directory: (sAMAccountName=%s)", EnvVars: []string{"WHARF_LDAP_USER_FILTER"}}),
	altsrc.NewStringFlag(&cli.StringFlag{Name: "ldap-group-base", Usage: "where groups are searched (default: --ldap-user-base)", EnvVars: []string{"WHARF_LDAP_GROUP_BASE"}}),
	altsrc.NewStringFlag(&cli.StringFlag{Name: "ldap-group-filter", Value: "(member=%s)", Usage: "finds a user's groups (%s: the user's DN); each group's cn is group:NAME in the rules", EnvVars: []string{"WHARF_LDAP_GROUP_FILTER"}}),
	altsrc.NewDurationFlag(&cli.DurationFlag{Name: "ldap-cache", Value: time.Minute, Usage: "verified sign-ins and groups are kept this long (a user removed from a group loses its rights within it)", EnvVars: []string{"WHARF_LDAP_CACHE"}}),
	altsrc.NewDurationFlag(&cli.DurationFlag{Name: "ldap-timeout", Value: 5 * time.Second, Usage: "each directory operation gives up after this (sign-ins then get 503)", EnvVars: []string{"WHARF_LDAP_TIMEOUT"}}),
}

// ldapDirectory is the directory the flags name; nil without --ldap-url.
func ldapDirectory(c *cli.Context) (*directory.Directory, error) {
	if c.String("ldap-url") == "" {
		for _, f := range []string{"ldap-bind-dn", "ldap-user-base", "ldap-group-base", "ldap-bind-password-file"} {
			if c.String(f) != "" {
				return nil, fmt.Errorf("--%s needs --ldap-url", f)
			}
		}
		return nil, nil
	}
	o := directory.Options{URL: c.String("ldap-url"), StartTLS: c.Bool("ldap-starttls"), CAFile: c.String("ldap-ca-file"),
		BindDN: c.String("ldap-bind-dn"), UserBase: c.String("ldap-user-base"), UserFilter: c.String("ldap-user-filter"),
		GroupBase: c.String("ldap-group-base"), GroupFilter: c.String("ldap-group-filter"), CacheTTL: c.Duration("ldap-cache"), Timeout: c.Duration("ldap-timeout")}
	var err error
	if o.BindPassword, err = secretFile(c, "ldap-bind-password-file"); err != nil {
		return nil, err
	}
	if o.BindDN != "" && o.BindPassword == "" {
		return nil, fmt.Errorf("--ldap-bind-dn needs --ldap-bind-password-file")
	}
	if strings.HasPrefix(o.URL, "ldaps://") && o.StartTLS {
		return nil, fmt.Errorf("--ldap-starttls is for ldap:// URLs; ldaps:// is TLS already")
	}
	return directory.New(o)
}

// secretFile is the first line of the file the flag names ("" without
// one): a password or a client secret kept out of the command line.
func secretFile(c *cli.Context, flag string) (string, error) {
	f := c.String(flag)
	if f == "" {
		return "", nil
	}
	raw, err := os.ReadFile(f)
	if err != nil {
		return "", fmt.Errorf("--%s: %w", flag, err)
	}
	line, _, _ := strings.Cut(strings.TrimRight(string(raw), "\r\n"), "\n")
	return line, nil
}

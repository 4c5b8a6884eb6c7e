package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/wharf-registry/wharf/policy"
)

var htpasswdFlag = &cli.StringFlag{Name: "htpasswd", Usage: "users file (bcrypt htpasswd)", EnvVars: []string{"WHARF_HTPASSWD"}, Required: true}

var userCommand = &cli.Command{
	Name:  "user",
	Usage: "manage the users file (passwords are read from stdin or a prompt, never from arguments)",
	Subcommands: []*cli.Command{
		{Name: "add", ArgsUsage: "NAME", Usage: "add a user", Flags: []cli.Flag{htpasswdFlag},
			Action: func(c *cli.Context) error { return setPassword(c, false) }},
		{Name: "passwd", ArgsUsage: "NAME", Usage: "change a user's password", Flags: []cli.Flag{htpasswdFlag},
			Action: func(c *cli.Context) error { return setPassword(c, true) }},
		{Name: "del", ArgsUsage: "NAME", Usage: "delete a user", Flags: []cli.Flag{htpasswdFlag},
			Action: func(c *cli.Context) error {
				users, name, err := loadUsersFor(c)
				if err != nil {
					return err
				}
				if !users.Delete(name) {
					return fmt.Errorf("no user %q", name)
				}
				return users.WriteFile(c.String("htpasswd"))
			}},
		{Name: "list", Usage: "list users", Flags: []cli.Flag{htpasswdFlag},
			Action: func(c *cli.Context) error {
				users, err := policy.LoadHtpasswd(c.String("htpasswd"))
				if err != nil {
					return err
				}
				for _, n := range users.Names() {
					fmt.Fprintln(c.App.Writer, n)
				}
				return nil
			}},
	},
}

func loadUsersFor(c *cli.Context) (*policy.Users, string, error) {
	if c.NArg() != 1 {
		return nil, "", fmt.Errorf("give exactly one user name")
	}
	users, err := policy.LoadHtpasswd(c.String("htpasswd"))
	return users, c.Args().First(), err
}

func setPassword(c *cli.Context, mustExist bool) error {
	users, name, err := loadUsersFor(c)
	if err != nil {
		return err
	}
	exists := slices.Contains(users.Names(), name)
	switch {
	case mustExist && !exists:
		return fmt.Errorf("no user %q", name)
	case !mustExist && exists:
		return fmt.Errorf("user %q exists; use passwd", name)
	}
	pass, err := readPassword(c.App.Reader, c.App.ErrWriter)
	if err != nil {
		return err
	}
	if err := users.Set(name, pass); err != nil {
		return err
	}
	return users.WriteFile(c.String("htpasswd"))
}

// readPassword prompts twice on a terminal, or reads one line from stdin.
func readPassword(in io.Reader, prompt io.Writer) (string, error) {
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(prompt, "Password: ")
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(prompt)
		if err != nil {
			return "", err
		}
		fmt.Fprint(prompt, "Again: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(prompt)
		if err != nil {
			return "", err
		}
		if string(a) != string(b) {
			return "", fmt.Errorf("passwords differ")
		}
		return string(a), nil
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// Package ldaptest runs the real OpenLDAP server (Debian's slapd) on
// loopback for tests, with a throw-away suffix: people under ou=people,
// groups (groupOfNames, cn = the group's name) under ou=groups, and a
// search account.
package ldaptest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/wharf-registry/wharf/internal/testport"
)

// Suffix is the test directory's base DN.
const Suffix = "dc=wharf,dc=test"

// The search account Wharf binds as.
const (
	BindDN       = "cn=wharf," + Suffix
	BindPassword = "search-secret"
	rootDN       = "cn=admin," + Suffix
	rootPassword = "root-secret"
	nobodyDN     = "cn=nobody," + Suffix // every group's first member (groupOfNames needs one)
)

// UserBase and GroupBase are where people and groups are.
const (
	UserBase  = "ou=people," + Suffix
	GroupBase = "ou=groups," + Suffix
)

// Server is a running slapd.
type Server struct {
	fatal func(format string, args ...any) // a test's Fatalf, or a panic (Run)
	URL   string
	addr  string
	cmd   *exec.Cmd
	done  chan struct{}
	dir   string
	conf  string
}

// Start runs slapd on a free loopback port. Without slapd installed the
// test skips, or fails when WHARF_E2E_REQUIRE=1 (CI).
func Start(t testing.TB) *Server {
	t.Helper()
	if slapdPath() == "" {
		if os.Getenv("WHARF_E2E_REQUIRE") == "1" {
			t.Fatalf("slapd not installed (Debian slapd)")
		}
		t.Skipf("slapd not installed (Debian slapd)")
	}
	s := &Server{fatal: t.Fatalf}
	t.Cleanup(s.Stop)
	s.setUp(t.TempDir())
	return s
}

// Run is Start for a program (the benchmark): slapd under dir, with the
// given people (uid → password) and groups (name → uids). Stop it.
func Run(dir string, people map[string]string, groups map[string][]string) (s *Server, err error) {
	if slapdPath() == "" {
		return nil, fmt.Errorf("slapd not installed (Debian slapd)")
	}
	s = &Server{fatal: func(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }}
	defer func() {
		if r := recover(); r != nil {
			s.Stop()
			s, err = nil, fmt.Errorf("%v", r)
		}
	}()
	s.setUp(dir)
	for uid, pw := range people {
		s.AddUser(uid, pw)
	}
	for name, uids := range groups {
		s.AddGroup(name, uids...)
	}
	return s, nil
}

func slapdPath() string {
	if p, err := exec.LookPath("slapd"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/slapd"); err == nil {
		return "/usr/sbin/slapd"
	}
	return ""
}

// setUp writes the configuration under dir, starts slapd and adds the
// suffix, the search account and the two branches.
func (s *Server) setUp(dir string) {
	if err := os.MkdirAll(filepath.Join(dir, "db"), 0o700); err != nil {
		s.fatal("%v", err)
	}
	conf := filepath.Join(dir, "slapd.conf")
	var b strings.Builder
	for _, sc := range []string{"core", "cosine", "nis", "inetorgperson"} {
		fmt.Fprintf(&b, "include /etc/ldap/schema/%s.schema\n", sc)
	}
	fmt.Fprintf(&b, "modulepath /usr/lib/ldap\nmoduleload back_mdb\npidfile %s/slapd.pid\nargsfile %s/slapd.args\n", dir, dir)
	fmt.Fprintf(&b, "database mdb\nmaxsize 104857600\nsuffix %q\nrootdn %q\nrootpw %s\ndirectory %s/db\n", Suffix, rootDN, rootPassword, dir)
	// The search account reads everything; people may bind.
	fmt.Fprintf(&b, "access to attrs=userPassword by anonymous auth by * none\naccess to * by dn.exact=%q read by * none\n", BindDN)
	if err := os.WriteFile(conf, []byte(b.String()), 0o600); err != nil {
		s.fatal("%v", err)
	}
	s.dir, s.conf = dir, conf
	s.start()
	s.add(Suffix, map[string][]string{"objectClass": {"dcObject", "organization"}, "dc": {"wharf"}, "o": {"Wharf test"}})
	s.add(BindDN, map[string][]string{"objectClass": {"simpleSecurityObject", "organizationalRole"}, "cn": {"wharf"}, "userPassword": {BindPassword}})
	s.add(nobodyDN, map[string][]string{"objectClass": {"organizationalRole"}, "cn": {"nobody"}})
	s.add(UserBase, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"people"}})
	s.add(GroupBase, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"groups"}})
}

// start runs slapd (again, after Stop, on the same port and data).
func (s *Server) start() {
	if s.addr == "" {
		addr, err := testport.Free()
		if err != nil {
			s.fatal("%v", err)
		}
		s.addr = addr
		s.URL = "ldap://" + s.addr
	}
	var out strings.Builder
	s.cmd = exec.Command(slapdPath(), "-f", s.conf, "-h", s.URL+"/", "-d", "0")
	s.cmd.Stdout, s.cmd.Stderr = &out, &out
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		s.fatal("%v", err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(s.cmd, s.done)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.DialTimeout("tcp", s.addr, time.Second); err == nil {
			c.Close()
			return
		}
		select {
		case <-s.done:
			s.fatal("slapd exited at start:\n%s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			s.fatal("slapd did not listen on %s within 20 s:\n%s", s.addr, out.String())
		}
	}
}

// Stop stops slapd (the directory is down until Restart).
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
	s.cmd = nil
}

// Restart starts a stopped slapd again.
func (s *Server) Restart() { s.start() }

func (s *Server) conn() *ldap.Conn {
	c, err := ldap.DialURL(s.URL)
	if err != nil {
		s.fatal("%v", err)
	}
	if err := c.Bind(rootDN, rootPassword); err != nil {
		s.fatal("%v", err)
	}
	return c
}

func (s *Server) add(dn string, attrs map[string][]string) {
	c := s.conn()
	defer c.Close()
	req := ldap.NewAddRequest(dn, nil)
	for k, v := range attrs {
		req.Attribute(k, v)
	}
	if err := c.Add(req); err != nil {
		s.fatal("ldap add %s: %v", dn, err)
	}
}

// UserDN is a person's DN.
func UserDN(uid string) string { return "uid=" + uid + "," + UserBase }

// AddUser adds a person who signs in with password.
func (s *Server) AddUser(uid, password string) {
	s.add(UserDN(uid), map[string][]string{"objectClass": {"inetOrgPerson"}, "uid": {uid}, "cn": {uid}, "sn": {uid}, "userPassword": {password}})
}

// AddGroup adds a group with the given people as members.
func (s *Server) AddGroup(name string, uids ...string) {
	members := []string{nobodyDN}
	for _, u := range uids {
		members = append(members, UserDN(u))
	}
	s.add("cn="+name+","+GroupBase, map[string][]string{"objectClass": {"groupOfNames"}, "cn": {name}, "member": members})
}

// RemoveFromGroup takes a person out of a group.
func (s *Server) RemoveFromGroup(name, uid string) {
	c := s.conn()
	defer c.Close()
	req := ldap.NewModifyRequest("cn="+name+","+GroupBase, nil)
	req.Delete("member", []string{UserDN(uid)})
	if err := c.Modify(req); err != nil {
		s.fatal("ldap remove %s from %s: %v", uid, name, err)
	}
}

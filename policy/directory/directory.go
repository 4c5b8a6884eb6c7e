// Package directory signs people in from the company directory (LDAP or
// Active Directory): search the user with a service account, bind as the
// user to check the password, and read the user's groups, which the rules
// then name as group:NAME. A verified sign-in is kept for a short while
// under a keyed hash of the credentials, so that the directory is not
// asked per request; a directory that is down or slow answers within a
// bounded time with ErrUnavailable.
package directory

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/wharf-registry/wharf/policy"

	"github.com/go-ldap/ldap/v3"
)

// ErrUnavailable: the directory did not answer (down, slow, or it refused
// the service account). Sign-ins fail with 503, not 401.
var ErrUnavailable = errors.New("the directory is unavailable")

// Options configures a Directory.
type Options struct {
	URL          string // ldap://host:389 or ldaps://host:636
	StartTLS     bool   // upgrade ldap:// with StartTLS
	CAFile       string // the directory's CA (default: the system's)
	BindDN       string // the search account
	BindPassword string
	UserBase     string
	UserFilter   string // %s is the user name (escaped); default (uid=%s), AD: (sAMAccountName=%s)
	GroupBase    string
	GroupFilter  string        // %s is the user's DN (escaped); default (member=%s)
	Timeout      time.Duration // per directory operation (default 5 s)
	CacheTTL     time.Duration // verified sign-ins and groups are kept this long (default 1 min)
}

// Directory is the company directory. It is safe for concurrent use.
type Directory struct {
	o   Options
	tls *tls.Config
	key [32]byte // keys the sign-in cache's hashes

	mu     sync.Mutex
	signed map[string]entry // keyed hash of user and password → groups
	groups map[string]entry // user → groups (for bearer tokens and sessions)
}

type entry struct {
	groups  []string
	until   time.Time
	unknown bool // the directory does not know the user (Groups)
}

// New checks o; it does not dial (a directory down at start does not stop
// the server).
func New(o Options) (*Directory, error) {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "ldap" && u.Scheme != "ldaps") || u.Host == "" {
		return nil, fmt.Errorf("--ldap-url %q: want ldap://host:389 or ldaps://host:636", o.URL)
	}
	if o.UserBase == "" {
		return nil, errors.New("--ldap-user-base is needed (where to search users, e.g. ou=people,dc=example,dc=com)")
	}
	if o.UserFilter == "" {
		o.UserFilter = "(uid=%s)"
	}
	if o.GroupFilter == "" {
		o.GroupFilter = "(member=%s)"
	}
	if o.GroupBase == "" {
		o.GroupBase = o.UserBase
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = time.Minute
	}
	d := &Directory{o: o, signed: map[string]entry{}, groups: map[string]entry{}}
	rand.Read(d.key[:])
	host, _, _ := net.SplitHostPort(u.Host)
	if host == "" {
		host = u.Host
	}
	d.tls = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	pool, err := policy.CAPool("ldap-ca-file", o.CAFile)
	if err != nil {
		return nil, err
	}
	d.tls.RootCAs = pool
	return d, nil
}

// String is the directory's URL, for messages.
func (d *Directory) String() string { return d.o.URL }

func (d *Directory) hash(user, password string) string {
	m := hmac.New(sha256.New, d.key[:])
	m.Write([]byte(user))
	m.Write([]byte{0})
	m.Write([]byte(password))
	return string(m.Sum(nil))
}

// Verify checks user's password against the directory and returns the
// user's groups. ok is false for an unknown user or a wrong password; err
// is ErrUnavailable when the directory could not say.
func (d *Directory) Verify(user, password string) (groups []string, ok bool, err error) {
	if user == "" || password == "" { // an empty password would be an anonymous bind
		return nil, false, nil
	}
	k, now := d.hash(user, password), time.Now()
	d.mu.Lock()
	e, hit := d.signed[k]
	d.mu.Unlock()
	if hit && now.Before(e.until) {
		return e.groups, true, nil
	}
	conn, err := d.dial()
	if err != nil {
		return nil, false, err
	}
	defer conn.Close()
	dn, err := d.findUser(conn, user)
	if err != nil || dn == "" {
		return nil, false, err
	}
	if err := conn.Bind(dn, password); err != nil {
		if ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("%w: binding as %s: %v", ErrUnavailable, user, err)
	}
	if err := d.bindService(conn); err != nil { // groups are searched as the service account
		return nil, false, err
	}
	if groups, err = d.findGroups(conn, dn); err != nil {
		return nil, false, err
	}
	d.mu.Lock()
	d.prune(now)
	d.signed[k] = entry{groups: groups, until: now.Add(d.o.CacheTTL)}
	d.groups[user] = entry{groups: groups, until: now.Add(d.o.CacheTTL)}
	d.mu.Unlock()
	return groups, true, nil
}

// Groups returns the groups of a user the directory knows (ok false when
// it does not): what a bearer token or a console session of a directory
// user signs in with, read again once the cache time has passed. While
// the directory does not answer, a user seen before keeps the last known
// groups (signed-in traffic is never blocked by it).
func (d *Directory) Groups(user string) (groups []string, ok bool, err error) {
	now := time.Now()
	d.mu.Lock()
	e, hit := d.groups[user]
	d.mu.Unlock()
	if hit && now.Before(e.until) {
		return e.groups, !e.unknown, nil
	}
	groups, ok, err = d.lookupGroups(user)
	if err != nil && hit && !e.unknown {
		return e.groups, true, nil // the directory is down: the last known groups
	}
	if err != nil {
		return nil, false, err
	}
	// Unknown names are kept too: a name the htpasswd file or single
	// sign-on signs in is asked about per request otherwise.
	d.mu.Lock()
	d.prune(now)
	d.groups[user] = entry{groups: groups, until: now.Add(d.o.CacheTTL), unknown: !ok}
	d.mu.Unlock()
	return groups, ok, nil
}

// lookupGroups asks the directory for a user's groups.
func (d *Directory) lookupGroups(user string) (groups []string, ok bool, err error) {
	conn, err := d.dial()
	if err != nil {
		return nil, false, err
	}
	defer conn.Close()
	dn, err := d.findUser(conn, user)
	if err != nil || dn == "" {
		return nil, false, err
	}
	groups, err = d.findGroups(conn, dn)
	return groups, err == nil, err
}

// prune drops expired cache entries (d.mu held).
func (d *Directory) prune(now time.Time) {
	if len(d.signed)+len(d.groups) < 4096 {
		return
	}
	for k, e := range d.signed {
		if !now.Before(e.until) {
			delete(d.signed, k)
		}
	}
	for k, e := range d.groups {
		if !now.Before(e.until) {
			delete(d.groups, k)
		}
	}
}

// dial connects and binds as the service account, within the timeout.
func (d *Directory) dial() (*ldap.Conn, error) {
	dialer := &net.Dialer{Timeout: d.o.Timeout}
	conn, err := ldap.DialURL(d.o.URL, ldap.DialWithDialer(dialer), ldap.DialWithTLSConfig(d.tls))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	conn.SetTimeout(d.o.Timeout)
	if d.o.StartTLS {
		if err := conn.StartTLS(d.tls); err != nil {
			conn.Close()
			return nil, fmt.Errorf("%w: StartTLS: %v", ErrUnavailable, err)
		}
	}
	if err := d.bindService(conn); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func (d *Directory) bindService(conn *ldap.Conn) error {
	var err error
	if d.o.BindDN == "" {
		err = conn.UnauthenticatedBind("")
	} else {
		err = conn.Bind(d.o.BindDN, d.o.BindPassword)
	}
	if err != nil {
		return fmt.Errorf("%w: the search account's bind: %v", ErrUnavailable, err)
	}
	return nil
}

// findUser returns the DN of user ("" when there is none, or more than one).
func (d *Directory) findUser(conn *ldap.Conn, user string) (string, error) {
	res, err := conn.Search(ldap.NewSearchRequest(d.o.UserBase, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 2, int(d.o.Timeout/time.Second), false,
		strings.ReplaceAll(d.o.UserFilter, "%s", ldap.EscapeFilter(user)), []string{"dn"}, nil))
	if err != nil {
		if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
			return "", nil
		}
		return "", fmt.Errorf("%w: searching %s: %v", ErrUnavailable, user, err)
	}
	if len(res.Entries) != 1 {
		return "", nil
	}
	return res.Entries[0].DN, nil
}

// findGroups returns the cn of every group whose filter names dn.
func (d *Directory) findGroups(conn *ldap.Conn, dn string) ([]string, error) {
	res, err := conn.Search(ldap.NewSearchRequest(d.o.GroupBase, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, int(d.o.Timeout/time.Second), false,
		strings.ReplaceAll(d.o.GroupFilter, "%s", ldap.EscapeFilter(dn)), []string{"cn"}, nil))
	if err != nil {
		if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: searching the groups of %s: %v", ErrUnavailable, dn, err)
	}
	var groups []string
	for _, e := range res.Entries {
		if cn := e.GetAttributeValue("cn"); cn != "" {
			groups = append(groups, cn)
		}
	}
	return groups, nil
}

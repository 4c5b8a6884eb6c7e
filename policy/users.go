package policy

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Users is an htpasswd file of bcrypt hashes. Verify is safe for
// concurrent use; a verified credential is remembered for a short while so
// bcrypt does not run on every request.
type Users struct {
	hashes map[string][]byte

	key   [32]byte // per-process HMAC key for the credential cache
	mu    sync.Mutex
	good  map[[32]byte]time.Time // HMAC(user, password) → expiry
	ttl   time.Duration
	limit int
}

// ParseHtpasswd reads "user:hash" lines; only bcrypt hashes ($2a$, $2b$,
// $2y$) are accepted, and any other line is an error naming its number.
func ParseHtpasswd(r io.Reader) (*Users, error) {
	u := newUsers()
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, hash, ok := strings.Cut(line, ":")
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return nil, fmt.Errorf("htpasswd line %d: not user:hash", n)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil || !strings.HasPrefix(hash, "$2") {
			return nil, fmt.Errorf("htpasswd line %d (user %q): only bcrypt hashes are accepted (htpasswd -B), found %q", n, name, hashKind(hash))
		}
		if _, dup := u.hashes[name]; dup {
			return nil, fmt.Errorf("htpasswd line %d: user %q listed twice", n, name)
		}
		u.hashes[name] = []byte(hash)
	}
	return u, sc.Err()
}

func hashKind(h string) string {
	switch {
	case strings.HasPrefix(h, "$apr1$"):
		return "MD5 (apr1)"
	case strings.HasPrefix(h, "{SHA}"):
		return "SHA-1"
	case strings.HasPrefix(h, "$5$"), strings.HasPrefix(h, "$6$"):
		return "SHA-crypt"
	case len(h) == 13:
		return "crypt(3)"
	}
	return "unknown or plain text"
}

// LoadHtpasswd reads an htpasswd file; a missing file is an empty set.
func LoadHtpasswd(path string) (*Users, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return newUsers(), nil
	} else if err != nil {
		return nil, err
	}
	defer f.Close()
	u, err := ParseHtpasswd(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return u, nil
}

func newUsers() *Users {
	u := &Users{hashes: map[string][]byte{}, good: map[[32]byte]time.Time{}, ttl: time.Minute, limit: 4096}
	rand.Read(u.key[:])
	return u
}

// Len is the number of users.
func (u *Users) Len() int { return len(u.hashes) }

// Names lists the users, sorted.
func (u *Users) Names() []string {
	out := make([]string, 0, len(u.hashes))
	for n := range u.hashes {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Generation identifies user's current credential: it changes when the
// password does and is empty for an unknown user. It is derived from the
// hash, so every process reading the same file agrees on it.
func (u *Users) Generation(user string) string {
	hash, ok := u.hashes[user]
	if !ok {
		return ""
	}
	sum := sha256.Sum256(hash)
	return base64.RawURLEncoding.EncodeToString(sum[:9])
}

// Verify checks a password. Successes are cached for a minute under an
// HMAC of user and password with a key that never leaves the process.
func (u *Users) Verify(user, password string) bool {
	hash, ok := u.hashes[user]
	if !ok {
		// Spend the same time as a real check, so names cannot be probed.
		bcrypt.CompareHashAndPassword(dummyHash, []byte(password))
		return false
	}
	m := hmac.New(sha256.New, u.key[:])
	m.Write([]byte(user))
	m.Write([]byte{0})
	m.Write([]byte(password))
	var k [32]byte
	copy(k[:], m.Sum(nil))
	now := time.Now()
	u.mu.Lock()
	exp, hit := u.good[k]
	u.mu.Unlock()
	if hit && now.Before(exp) {
		return true
	}
	if bcrypt.CompareHashAndPassword(hash, []byte(password)) != nil {
		return false
	}
	u.mu.Lock()
	if len(u.good) >= u.limit {
		for key, e := range u.good {
			if now.After(e) || len(u.good) >= u.limit {
				delete(u.good, key)
			}
		}
	}
	u.good[k] = now.Add(u.ttl)
	u.mu.Unlock()
	return true
}

var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("wharf"), bcrypt.DefaultCost)

// Set adds or replaces a user's password (bcrypt, default cost).
func (u *Users) Set(user, password string) error {
	if user == "" || strings.ContainsAny(user, ": \t\n") {
		return fmt.Errorf("invalid user name %q", user)
	}
	if password == "" {
		return errors.New("empty password")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	if err != nil {
		return err
	}
	u.hashes[user] = h
	return nil
}

// Delete removes a user; it reports whether the user existed.
func (u *Users) Delete(user string) bool {
	_, ok := u.hashes[user]
	delete(u.hashes, user)
	return ok
}

// WriteFile writes the users atomically (temp file, fsync, rename), 0600.
func (u *Users) WriteFile(path string) error {
	var b bytes.Buffer
	for _, n := range u.Names() {
		fmt.Fprintf(&b, "%s:%s\n", n, u.hashes[n])
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b.Bytes()); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// CAPool reads a PEM file of CA certificates (a directory's or an
// identity provider's) for the option flag names; nil for no file.
func CAPool(flag, file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--%s %s: no PEM certificate in it", flag, file)
	}
	return pool, nil
}

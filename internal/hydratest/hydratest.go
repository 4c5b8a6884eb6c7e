// Package hydratest runs a real OpenID Connect provider for tests: Ory
// Hydra (built from internal/tools/hydra, in-memory storage) on loopback,
// with the login and consent app every Hydra deployment supplies itself.
// Here that app signs in whoever the test names (SignInAs) through
// Hydra's admin API, and puts the person's name and groups into the ID
// token, as a company's login app would from its own user store.
package hydratest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/testport"
)

// Person is who the login app signs in next.
type Person struct {
	Subject string   // the provider's id (sub)
	Name    string   // preferred_username ("": the claim is left out)
	Email   string   // email ("": left out)
	Groups  []string // groups (nil: the claim is left out)
	Refuse  bool     // the login app refuses the sign-in (a wrong password)
}

// Server is a running Hydra with its login and consent app.
type Server struct {
	Issuer string // the public URL (issuer)
	admin  string
	cmd    *exec.Cmd
	done   chan struct{}
	app    *httptest.Server
	log    *bytes.Buffer
	logMu  *sync.Mutex

	mu   sync.Mutex // guards next, cmd and done
	next Person
}

var hydra struct {
	once sync.Once
	bin  string
	err  error
}

// build compiles Hydra once per test binary (with SQLite for its
// in-memory store; the Go build cache makes later builds quick).
func build() (string, error) {
	hydra.once.Do(func() {
		dir, err := os.MkdirTemp("", "hydra")
		if err != nil {
			hydra.err = err
			return
		}
		hydra.bin = filepath.Join(dir, "hydra")
		_, here, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-tags", "sqlite,sqlite_omit_load_extension", "-o", hydra.bin, "github.com/ory/hydra/v2")
		cmd.Dir = filepath.Join(filepath.Dir(here), "..", "tools", "hydra")
		if out, err := cmd.CombinedOutput(); err != nil {
			hydra.err = fmt.Errorf("building hydra: %v\n%s", err, out)
		}
	})
	return hydra.bin, hydra.err
}

// pickAddr picks a loopback address for Hydra (a test may replace it).
var pickAddr = testport.Pick

type syncWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// Start runs Hydra on free loopback ports with PKCE enforced, and its
// login and consent app. It stops both at cleanup (Hydra by its PID).
// Without Go's toolchain the test skips, or fails when WHARF_E2E_REQUIRE=1.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := build()
	if err != nil {
		if os.Getenv("WHARF_E2E_REQUIRE") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	s := &Server{log: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	s.app = httptest.NewServer(http.HandlerFunc(s.serveApp))
	t.Cleanup(s.app.Close)
	// A file database with a busy timeout: the in-memory one fails
	// concurrent writes (two token requests at once) with a server_error.
	dsn := "DSN=sqlite://" + filepath.Join(t.TempDir(), "hydra.sqlite") + "?_fk=true&_busy_timeout=10000&_journal_mode=WAL"
	migrate := exec.Command(bin, "migrate", "sql", "up", "-e", "--yes")
	migrate.Env = append(os.Environ(), dsn)
	if out, err := migrate.CombinedOutput(); err != nil {
		t.Fatalf("hydra migrate: %v\n%s", err, out)
	}
	t.Cleanup(s.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("hydra's log:\n%s", s.Log())
		}
	})
	// The ports are free when picked, but another process may take one
	// before Hydra binds it; Hydra then exits, and gets other ports.
	for attempt := 1; ; attempt++ {
		err := s.launch(bin, dsn, pickAddr(t), pickAddr(t))
		if err == nil {
			return s
		}
		if attempt == launchAttempts || !strings.Contains(s.Log(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("hydra attempt %d: %v; again on other ports", attempt, err)
	}
}

// launchAttempts bounds Start's tries when a picked port was taken.
const launchAttempts = 4

// launch starts Hydra on the public and admin addresses and waits until
// it answers; an error says why not (Hydra then is not running).
func (s *Server) launch(bin, dsn, public, admin string) error {
	pubHost, pubPort, _ := net.SplitHostPort(public)
	admHost, admPort, _ := net.SplitHostPort(admin)
	s.Issuer, s.admin = "http://"+public+"/", "http://"+admin
	s.logMu.Lock()
	s.log.Reset()
	s.logMu.Unlock()
	cmd := exec.Command(bin, "serve", "all", "--dev", "--sqa-opt-out")
	cmd.Env = append(os.Environ(),
		dsn,
		"SERVE_PUBLIC_HOST="+pubHost, "SERVE_PUBLIC_PORT="+pubPort,
		"SERVE_ADMIN_HOST="+admHost, "SERVE_ADMIN_PORT="+admPort,
		"URLS_SELF_ISSUER="+s.Issuer,
		"URLS_LOGIN="+s.app.URL+"/login", "URLS_CONSENT="+s.app.URL+"/consent",
		"SECRETS_SYSTEM=wharf-test-system-secret-0123456789",
		"OAUTH2_PKCE_ENFORCED=true",
		"LOG_LEVEL=info") // its log is shown when the test fails
	cmd.Stdout, cmd.Stderr = syncWriter{s.logMu, s.log}, syncWriter{s.logMu, s.log}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	// Each probe is bounded: a port taken by another process may accept
	// and never answer.
	probe := &http.Client{Timeout: 2 * time.Second}
	ready := func(u string) bool {
		resp, err := probe.Get(u)
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-done:
			return fmt.Errorf("hydra exited:\n%s", s.Log())
		default:
		}
		if ready(s.Issuer+".well-known/openid-configuration") && ready(s.admin+"/health/ready") {
			return nil
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("hydra did not answer on %s and %s\n%s", public, admin, s.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Log is what Hydra wrote.
func (s *Server) Log() string {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	return s.log.String()
}

// Stop stops Hydra by its PID (again, or before it ran: a no-op).
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// Client registers an OAuth client for the authorization code flow that
// may be sent back to redirectURL; it returns its id and secret.
func (s *Server) Client(t testing.TB, redirectURL string, scopes string) (id, secret string) {
	t.Helper()
	var out struct {
		ID     string `json:"client_id"`
		Secret string `json:"client_secret"`
	}
	err := s.call(http.MethodPost, "/admin/clients", map[string]any{
		"client_name": "wharf", "redirect_uris": []string{redirectURL},
		"grant_types": []string{"authorization_code", "refresh_token"}, "response_types": []string{"code"},
		"scope": scopes, "token_endpoint_auth_method": "client_secret_basic",
	}, &out)
	if err != nil {
		t.Fatal(err)
	}
	return out.ID, out.Secret
}

// RevokeConsent revokes every grant the person (subject) gave, and with
// them their refresh tokens, as an admin removing someone does.
func (s *Server) RevokeConsent(t testing.TB, subject string) {
	t.Helper()
	if err := s.call(http.MethodDelete, "/admin/oauth2/auth/sessions/consent?all=true&subject="+url.QueryEscape(subject), nil, nil); err != nil {
		t.Fatal(err)
	}
}

// SignInAs makes the login app sign in p from now on.
func (s *Server) SignInAs(p Person) {
	s.mu.Lock()
	s.next = p
	s.mu.Unlock()
}

// call sends a JSON request to Hydra's admin API.
func (s *Server) call(method, path string, body, out any) error {
	b, _ := json.Marshal(body)
	req, err := http.NewRequest(method, s.admin+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("hydra %s %s: %s: %s", method, path, resp.Status, raw)
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

// serveApp is the login and consent app.
func (s *Server) serveApp(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	p := s.next
	s.mu.Unlock()
	var redirect struct {
		To string `json:"redirect_to"`
	}
	var err error
	switch r.URL.Path {
	case "/login":
		ch := url.QueryEscape(r.URL.Query().Get("login_challenge"))
		if p.Refuse {
			err = s.call(http.MethodPut, "/admin/oauth2/auth/requests/login/reject?login_challenge="+ch,
				map[string]any{"error": "access_denied", "error_description": "wrong password"}, &redirect)
			break
		}
		err = s.call(http.MethodPut, "/admin/oauth2/auth/requests/login/accept?login_challenge="+ch,
			map[string]any{"subject": p.Subject}, &redirect)
	case "/consent":
		ch := url.QueryEscape(r.URL.Query().Get("consent_challenge"))
		var req struct {
			Scope    []string `json:"requested_scope"`
			Audience []string `json:"requested_access_token_audience"`
		}
		if err = s.call(http.MethodGet, "/admin/oauth2/auth/requests/consent?consent_challenge="+ch, nil, &req); err != nil {
			break
		}
		claims := map[string]any{}
		if p.Name != "" {
			claims["preferred_username"] = p.Name
		}
		if p.Email != "" {
			claims["email"], claims["email_verified"] = p.Email, true
		}
		if p.Groups != nil {
			claims["groups"] = p.Groups
		}
		err = s.call(http.MethodPut, "/admin/oauth2/auth/requests/consent/accept?consent_challenge="+ch, map[string]any{
			"grant_scope": req.Scope, "grant_access_token_audience": req.Audience,
			"session": map[string]any{"id_token": claims},
		}, &redirect)
	default:
		http.NotFound(w, r)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	http.Redirect(w, r, redirect.To, http.StatusFound)
}

package hydratest

import (
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/wharf-registry/wharf/internal/testport"
)

// TestStartTakenPort: a port picked for Hydra that another process takes
// before Hydra binds it (here a listener that accepts and never answers)
// makes Start try again on other ports, not fail or hang.
func TestStartTakenPort(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	picks := 0
	pickAddr = func(t testing.TB) string {
		picks++
		if picks == 1 {
			return taken.Addr().String()
		}
		return testport.Pick(t)
	}
	defer func() { pickAddr = testport.Pick }()
	s := Start(t)
	if picks < 4 {
		t.Fatalf("%d addresses picked, want a second pair after the taken port", picks)
	}
	if strings.Contains(s.Issuer, taken.Addr().String()) {
		t.Fatalf("issuer %s is on the taken port", s.Issuer)
	}
	for _, u := range []string{s.Issuer + ".well-known/openid-configuration", s.admin + "/health/ready"} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", u, resp.Status)
		}
	}
}

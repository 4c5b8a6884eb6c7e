package testport

import (
	"net"
	"strconv"
	"testing"
)

// TestFree: each address is on loopback, free (a listener can take it)
// and, where the machine leaves room below the kernel's ephemeral range,
// below it.
func TestFree(t *testing.T) {
	low := ephemeralLow()
	below := low-lowest >= 1000
	seen := map[string]bool{}
	for range 50 {
		addr := Pick(t)
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := strconv.Atoi(port)
		if host != "127.0.0.1" || below && (p < lowest || p >= low) {
			t.Fatalf("%s: want 127.0.0.1 and a port in [%d, %d)", addr, lowest, low)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("%s picked but not free: %v", addr, err)
		}
		ln.Close()
		seen[addr] = true
	}
	if len(seen) < 40 {
		t.Fatalf("50 picks gave %d distinct ports: not random", len(seen))
	}
}

// TestFreeSkipsTaken: a port in use is never picked.
func TestFreeSkipsTaken(t *testing.T) {
	low := ephemeralLow()
	// Hold many ports of the range; none of them may come back.
	held := map[string]bool{}
	for p := lowest; p < lowest+2000 && p < low; p++ {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		defer ln.Close()
		held[ln.Addr().String()] = true
	}
	for range 200 {
		if addr := Pick(t); held[addr] {
			t.Fatalf("picked %s, which is in use", addr)
		}
	}
}

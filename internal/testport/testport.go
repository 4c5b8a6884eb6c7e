// Package testport picks loopback addresses for the servers tests and the
// benchmark start as processes of their own (Wharf, etcd, slapd, Hydra,
// versitygw, nginx), which must be told their port before they bind it.
//
// A port the kernel found free (listen on port 0, then close) is in the
// ephemeral range, where every outgoing connection on the machine also
// takes its local port: between the pick and the server's bind, any
// connection may take it, and the server then fails with "address
// already in use". Ports picked here lie below that range, where the
// kernel hands out none: only another pick can take one, and picks are
// random over thousands of ports.
package testport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// lowest is the lowest port picked: above the well-known and most
// registered service ports.
const lowest = 10000

// Free returns a loopback address ("127.0.0.1:PORT") whose port is free
// now and outside the kernel's ephemeral range.
func Free() (string, error) {
	below := ephemeralLow()
	if below-lowest < 1000 { // no room below the range: the kernel's pick
		return kernelPick()
	}
	for range 100 {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(lowest+rand.IntN(below-lowest)))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue // in use: another
		}
		ln.Close()
		return addr, nil
	}
	return "", errors.New("no free loopback port below the ephemeral range in 100 tries")
}

// Pick is Free for a test: it fails the test when there is no port.
func Pick(t testing.TB) string {
	t.Helper()
	addr, err := Free()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's
// default when it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return n
}

func kernelPick() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("a free loopback port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

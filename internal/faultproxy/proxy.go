// Package faultproxy is a TCP proxy for tests that breaks connections the
// way real networks do: it forwards bytes between a client and a target on
// loopback and, when a rule matches what the client sent (an HTTP request
// line, say), it stalls the answer (a black hole: the connection stays open
// and nothing more arrives, no FIN, no RST), resets the connection (RST) or
// half-closes it (FIN) after a number of answer bytes. It counts the bytes it
// forwarded each way.
package faultproxy

import (
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Fault is what a rule does to a connection.
type Fault int

const (
	// Stall stops forwarding the answer; the connection stays open.
	Stall Fault = iota + 1
	// Reset aborts both directions with an RST.
	Reset
	// HalfClose ends the answer with a FIN, as a clean close would.
	HalfClose
)

// Rule applies Fault, Times times, to the answer of a request whose bytes
// contain Match, after After bytes of that answer. A matching request
// whose answer ends sooner (a 401 asking for a token, say) does not use
// the rule up: the next matching request is armed again.
type Rule struct {
	Match []byte
	Fault Fault
	After int64
	Times int
}

// Proxy forwards connections from its listener to Target.
type Proxy struct {
	Addr   string // host:port it listens on
	target string
	ln     net.Listener

	mu    sync.Mutex
	rules []*Rule
	conns map[net.Conn]bool

	Up, Down atomic.Int64 // bytes forwarded client→target, target→client
	Applied  atomic.Int64 // faults applied
	freezes  atomic.Int64 // FreezeAll calls: a connection older than the latest is frozen
	hole     atomic.Bool  // BlackHole: new connections are frozen from the start
	wg       sync.WaitGroup
	closed   atomic.Bool
}

// Start proxies to target until the test ends.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Add arms a rule.
func (p *Proxy) Add(r Rule) {
	if r.Times <= 0 {
		r.Times = 1
	}
	p.mu.Lock()
	p.rules = append(p.rules, &r)
	p.mu.Unlock()
}

// FreezeAll freezes every connection open now, idle or busy, in both
// directions, as a middlebox that lost their state does: they stay open
// and carry nothing more. Connections made afterwards work.
func (p *Proxy) FreezeAll() { p.freezes.Add(1) }

// BlackHole(true) freezes every connection, open or made later, as a
// server that accepts connections and never answers does; BlackHole(false)
// lets new connections through again (the frozen ones stay frozen).
func (p *Proxy) BlackHole(on bool) {
	if on {
		p.hole.Store(true)
		p.freezes.Add(1)
	} else {
		p.hole.Store(false)
	}
}

// Close stops the proxy and every connection through it.
func (p *Proxy) Close() {
	if p.closed.Swap(true) {
		return
	}
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) track(c net.Conn, on bool) {
	p.mu.Lock()
	if on {
		p.conns[c] = true
	} else {
		delete(p.conns, c)
	}
	p.mu.Unlock()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

// armed is the fault waiting on one connection's answer.
type armed struct {
	mu   sync.Mutex
	rule *Rule
	left int64 // answer bytes before it strikes
	set  bool
}

func (a *armed) arm(r *Rule) {
	a.mu.Lock()
	a.rule, a.left, a.set = r, r.After, true
	a.mu.Unlock()
}

func (a *armed) disarm() {
	a.mu.Lock()
	a.set = false
	a.mu.Unlock()
}

// take returns how many of n answer bytes may pass before the fault, and
// the fault if it strikes within them (and its rule is not used up).
func (p *Proxy) take(a *armed, n int64) (int64, Fault) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.set {
		return n, 0
	}
	if n < a.left {
		a.left -= n
		return n, 0
	}
	a.set = false
	p.mu.Lock()
	defer p.mu.Unlock()
	if a.rule.Times <= 0 {
		return n, 0 // another connection used it up meanwhile
	}
	a.rule.Times--
	return a.left, a.rule.Fault
}

func (p *Proxy) match(b []byte) *Rule {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.rules {
		if r.Times > 0 && bytes.Contains(b, r.Match) {
			return r
		}
	}
	return nil
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		client.Close()
		return
	}
	p.track(client, true)
	p.track(server, true)
	defer func() {
		p.track(client, false)
		p.track(server, false)
		client.Close()
		server.Close()
	}()
	var a armed
	gen := p.freezes.Load()
	if p.hole.Load() {
		gen = -1 // frozen for good
	}
	frozen := func() bool { return p.freezes.Load() != gen }
	done := make(chan struct{}, 2)
	go func() { // client → target: watch for rules
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 32<<10)
		for {
			n, err := client.Read(buf)
			if n > 0 && frozen() {
				n = 0 // swallowed
			}
			if n > 0 {
				if r := p.match(buf[:n]); r != nil {
					a.arm(r)
				} else if bytes.HasPrefix(buf[:n], []byte("GET ")) || bytes.HasPrefix(buf[:n], []byte("HEAD ")) {
					a.disarm() // the next request on this connection: the fault was for another answer
				}
				if _, werr := server.Write(buf[:n]); werr != nil {
					return
				}
				p.Up.Add(int64(n))
			}
			if err != nil {
				if tc, ok := server.(*net.TCPConn); ok {
					tc.CloseWrite()
				}
				return
			}
		}
	}()
	go func() { // target → client: apply the armed fault
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 32<<10)
		for {
			n, err := server.Read(buf)
			if n > 0 && frozen() {
				n = 0
			}
			if n > 0 {
				pass, fault := p.take(&a, int64(n))
				if pass > 0 {
					if _, werr := client.Write(buf[:pass]); werr != nil {
						return
					}
					p.Down.Add(pass)
				}
				if fault != 0 {
					p.Applied.Add(1)
					p.strike(client, server, fault)
					return
				}
			}
			if err != nil {
				if tc, ok := client.(*net.TCPConn); ok && !frozen() { // a frozen one hears no FIN
					tc.CloseWrite()
				}
				return
			}
		}
	}()
	<-done
	<-done
}

// strike applies fault; for Stall it returns only when the proxy closes or
// the client gives up on the connection.
func (p *Proxy) strike(client, server net.Conn, f Fault) {
	switch f {
	case Reset:
		if tc, ok := client.(*net.TCPConn); ok {
			tc.SetLinger(0) // Close sends RST
		}
		client.Close()
		server.Close()
	case HalfClose:
		if tc, ok := client.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		server.Close()
	case Stall:
		server.Close() // the target's side ends; the client's hears nothing more
		io.Copy(io.Discard, client)
	}
}

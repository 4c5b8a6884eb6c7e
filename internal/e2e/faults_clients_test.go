package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// dialFrom connects to addr from local address ip (any 127.0.0.0/8 address
// works on Linux) with a small receive buffer, so that a client that reads
// slowly makes the server's writes wait instead of filling kernel buffers.
func dialFrom(ip, addr string, rcvbuf int) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)},
		Control: func(network, address string, c syscall.RawConn) error {
			var serr error
			c.Control(func(fd uintptr) {
				if rcvbuf > 0 {
					serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
				}
			})
			return serr
		}}
	return d.Dial("tcp", addr)
}

// rssBytes is the resident set of process pid.
func rssBytes(pid int) int64 { return procStatusBytes(pid, "VmRSS:") }

// peakRSS is the highest resident set process pid has had.
func peakRSS(pid int) int64 { return procStatusBytes(pid, "VmHWM:") }

// procStatusBytes reads a "… kB" field of /proc/<pid>/status.
func procStatusBytes(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func pushBytes(t *testing.T, w *wharfProc, repo string, b []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(b)
	resp, err := http.Post(w.url("/v2/"+repo+"/blobs/uploads/?digest="+d.String()), "application/octet-stream", bytes.NewReader(b))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("push: %v %v", err, resp)
	}
	resp.Body.Close()
	return d
}

// TestSlowClients: 200 clients reading a 16 MiB blob at 10 KiB/s and 64
// uploaders sending 1 KiB/s, each from its own address (so that the
// per-client limit does not stop them: they hold every upload slot), with
// the default settings. Meanwhile another client's push, chunked upload and
// full-speed pull work (uploads started across a second are all admitted),
// and the process's memory stays under 64 MiB (it
// held a 512 KiB buffer per slow reader before: 131 MiB).
func TestSlowClients(t *testing.T) {
	w := startWharf(t, "", "--mirror=false")
	big := make([]byte, 16<<20)
	rand.Read(big)
	bigD := pushBytes(t, w, "team/big", big)
	base := rssBytes(w.cmd.Process.Pid)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var readersUp, uploadersUp, readBytes atomic.Int64
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialFrom(fmt.Sprintf("127.0.2.%d", 1+i%250), w.addr, 4096)
			if err != nil {
				return
			}
			defer c.Close()
			fmt.Fprintf(c, "GET /v2/team/big/blobs/%s HTTP/1.1\r\nHost: %s\r\n\r\n", bigD, w.addr)
			readersUp.Add(1)
			buf := make([]byte, 1024)
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				n, err := c.Read(buf)
				readBytes.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
	}
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ip := fmt.Sprintf("127.0.3.%d", 1+i)
			c, err := dialFrom(ip, w.addr, 0)
			if err != nil {
				return
			}
			defer c.Close()
			br := bufio.NewReader(c)
			fmt.Fprintf(c, "POST /v2/team/slow/blobs/uploads/ HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n\r\n", w.addr)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusAccepted {
				return
			}
			resp.Body.Close()
			fmt.Fprintf(c, "PATCH %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", resp.Header.Get("Location"), w.addr, 1<<20)
			uploadersUp.Add(1)
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if _, err := c.Write(make([]byte, 1024)); err != nil {
					return
				}
			}
		}()
	}
	time.Sleep(5 * time.Second)
	if readersUp.Load() < 200 || uploadersUp.Load() < 64 {
		t.Fatalf("only %d slow readers and %d slow uploaders got going", readersUp.Load(), uploadersUp.Load())
	}
	// Another client pushes (one POST, and in chunks) and pulls at full speed.
	start := time.Now()
	other := make([]byte, 4<<20)
	rand.Read(other)
	pushBytes(t, w, "team/other", other)
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Post(w.url("/v2/team/other/blobs/uploads/"), "", nil)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("starting a chunked upload beside 64 slow uploaders: %v %v", err, resp)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	req, _ := http.NewRequest(http.MethodPatch, w.url(loc), bytes.NewReader(other[:1<<20]))
	req.Header.Set("Content-Type", "application/octet-stream")
	if resp, err = c.Do(req); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("chunk beside 64 slow uploaders: %v %v", err, resp)
	}
	resp.Body.Close()
	// The uploaders send in step, once a second: uploads started across a
	// second must all be admitted, not only those between their sends.
	for i := 0; i < 12; i++ {
		time.Sleep(100 * time.Millisecond)
		resp, err := c.Post(w.url("/v2/team/other/blobs/uploads/"), "", nil)
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("upload %d started beside 64 slow uploaders sending in step: %v %v", i, err, resp)
		}
		resp.Body.Close()
		del, _ := http.NewRequest(http.MethodDelete, w.url(resp.Header.Get("Location")), nil)
		if resp, err = c.Do(del); err == nil {
			resp.Body.Close()
		}
	}
	if got, err := blobDigest(c, w, "team/big", bigD); err != nil || got != bigD {
		t.Fatalf("full-speed pull beside 200 slow readers: %v", err)
	}
	others := time.Since(start)
	var peak int64
	for i := 0; i < 20; i++ {
		peak = max(peak, rssBytes(w.cmd.Process.Pid))
		time.Sleep(100 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("200 slow readers (%d KiB read in all) and 64 slow uploaders: another client's push, chunk and 16 MiB pull took %s; RSS %d MiB before, %d MiB peak",
		readBytes.Load()>>10, others.Round(time.Millisecond), base>>20, peak>>20)
	if others > 22*time.Second {
		t.Fatalf("other clients' work took %s beside slow clients", others)
	}
	if peak > 64<<20 {
		t.Fatalf("RSS %d MiB with 200 slow readers and 64 slow uploaders (bound 64 MiB)", peak>>20)
	}
}

// TestClientCutOff: with --client-timeout 2s, a client that stops reading
// a response is cut off (and logged), and an upload body that stops short
// of its Content-Length gets 400 and stores nothing of that chunk.
func TestClientCutOff(t *testing.T) {
	w := startWharf(t, "", "--mirror=false", "--client-timeout", "2s")
	big := make([]byte, 16<<20)
	rand.Read(big)
	bigD := pushBytes(t, w, "team/big", big)

	c, err := dialFrom("127.0.0.1", w.addr, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /v2/team/big/blobs/%s HTTP/1.1\r\nHost: %s\r\n\r\n", bigD, w.addr)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(w.log.String(), "client cut off: it read nothing") {
		if time.Now().After(deadline) {
			t.Fatalf("a client that reads nothing was not cut off:\n%s", w.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if err != nil || n >= int64(len(big)) {
		t.Fatalf("after the cut: read %d more bytes, %v (want the connection closed short)", n, err)
	}

	resp, err := http.Post(w.url("/v2/team/short/blobs/uploads/"), "", nil)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST: %v %v", err, resp)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	u, err := dialFrom("127.0.0.1", w.addr, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	fmt.Fprintf(u, "PATCH %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", loc, w.addr, 1<<20)
	u.Write(make([]byte, 10<<10)) // then nothing
	start := time.Now()
	u.SetReadDeadline(time.Now().Add(20 * time.Second))
	presp, err := http.ReadResponse(bufio.NewReader(u), nil)
	if err != nil || presp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a body short of its Content-Length: %v %v (after %s)", err, presp, time.Since(start))
	}
	status, err := http.Get(w.url(loc))
	if err != nil {
		t.Fatal(err)
	}
	status.Body.Close()
	if r := status.Header.Get("Range"); r != "0-0" {
		t.Fatalf("session after the short chunk: Range %q, want nothing stored (0-0)", r)
	}
	t.Logf("short body answered 400 after %s", time.Since(start).Round(time.Millisecond))
}

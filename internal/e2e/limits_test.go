package e2e

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestSlowClientCutOff: a client that sends its headers a byte a second is
// disconnected after the header timeout, logged, and the server keeps
// serving everyone else meanwhile.
func TestSlowClientCutOff(t *testing.T) {
	w := startWharf(t, "", "--header-timeout", "1s", "--mirror=false")
	conn, err := net.Dial("tcp", w.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	closed := make(chan time.Duration, 1)
	start := time.Now()
	go func() {
		io.Copy(io.Discard, conn) // returns when the server closes the connection
		closed <- time.Since(start)
	}()
	go func() {
		for _, b := range []byte("GET /v2/ HTTP/1.1\r\nHost: x\r\n") {
			if _, err := conn.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(time.Second)
		}
	}()
	for i := 0; i < 3; i++ { // others are served while it dribbles
		resp, err := http.Get(w.url("/v2/"))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("server stopped serving during a slow client: %v", err)
		}
		resp.Body.Close()
		time.Sleep(300 * time.Millisecond)
	}
	select {
	case d := <-closed:
		if d > 5*time.Second {
			t.Fatalf("slow client cut off after %s", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("slow client never cut off")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(w.log.String(), "no complete request headers within the header timeout") {
		if time.Now().After(deadline) {
			t.Fatalf("no log line for the slow client:\n%s", w.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestUploadLimitPerClient: uploads beyond --max-uploads-per-client get
// 429 TOOMANYREQUESTS while the others run, and succeed afterwards.
func TestUploadLimitPerClient(t *testing.T) {
	w := startWharf(t, "", "--max-uploads-per-client", "1", "--mirror=false")
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPost, w.url("/v2/lim/a/blobs/uploads/?digest=sha256:"+strings.Repeat("0", 64)), pr)
	req.ContentLength = 10
	first := make(chan int, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			first <- 0
			return
		}
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	pw.Write([]byte("12345")) // the first upload is now running
	time.Sleep(200 * time.Millisecond)
	resp, err := http.Post(w.url("/v2/lim/b/blobs/uploads/"), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body := bufio.NewScanner(resp.Body)
	body.Scan()
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(body.Text(), "TOOMANYREQUESTS") || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("second concurrent upload: %s %s", resp.Status, body.Text())
	}
	pw.Write([]byte("67890"))
	pw.Close()
	if st := <-first; st != http.StatusBadRequest { // wrong digest on purpose: it ran
		t.Fatalf("first upload: %d", st)
	}
	resp, err = http.Post(w.url("/v2/lim/b/blobs/uploads/"), "", nil)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("upload after the first ended: %v %v", err, resp.Status)
	}
	resp.Body.Close()
	// The refusal is logged (and counted) once, like every request.
	var refused int
	for _, line := range strings.Split(w.log.String(), "\n") {
		if strings.Contains(line, "msg=request") && strings.Contains(line, "status=429") && strings.Contains(line, "TOOMANYREQUESTS") {
			refused++
		}
	}
	if refused != 1 {
		t.Fatalf("%d log lines for the one refused upload, want 1:\n%s", refused, w.log)
	}
}

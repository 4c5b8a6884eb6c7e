// Package s3test runs a real S3-compatible server for tests: versitygw
// with its posix backend, built from internal/tools/versitygw.
package s3test

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/wharf-registry/wharf/internal/testport"
)

// Server is a running versitygw with one bucket.
type Server struct {
	Addr, Bucket         string
	AccessKey, SecretKey string
	Client               *minio.Client
	cmd                  *exec.Cmd
	once                 sync.Once
}

var versitygw struct {
	once sync.Once
	bin  string
	err  error
}

// Start runs a real S3-compatible server, versitygw with its posix
// backend (built from internal/tools/versitygw), on a loopback port with
// one bucket, and stops it by PID at cleanup. Without Go's toolchain it
// skips, or fails when WHARF_E2E_REQUIRE=1 (CI).
func Start(t testing.TB) *Server {
	t.Helper()
	versitygw.once.Do(func() {
		dir, err := os.MkdirTemp("", "versitygw")
		if err != nil {
			versitygw.err = err
			return
		}
		versitygw.bin = filepath.Join(dir, "versitygw")
		cmd := exec.Command("go", "build", "-o", versitygw.bin, "github.com/versity/versitygw/cmd/versitygw")
		_, here, _, _ := runtime.Caller(0)
		cmd.Dir = filepath.Join(filepath.Dir(here), "..", "tools", "versitygw")
		if out, err := cmd.CombinedOutput(); err != nil {
			versitygw.err = err
			versitygw.bin = string(out)
		}
	})
	if versitygw.err != nil {
		if os.Getenv("WHARF_E2E_REQUIRE") == "1" {
			t.Fatalf("building versitygw: %v\n%s", versitygw.err, versitygw.bin)
		}
		t.Skipf("versitygw not built: %v", versitygw.err)
	}
	addr := testport.Pick(t)
	root := t.TempDir()
	const ak, sk = "wharf-test", "wharf-test-secret"
	cmd := exec.Command(versitygw.bin, "--access", ak, "--secret", sk, "--port", addr, "posix", root)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	srv := &Server{cmd: cmd}
	t.Cleanup(srv.Stop)
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw did not answer on %s\n%s", addr, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cl, err := minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(ak, sk, "")})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.MakeBucket(context.Background(), "wharf", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	srv.Addr, srv.Bucket, srv.AccessKey, srv.SecretKey, srv.Client = addr, "wharf", ak, sk, cl
	return srv
}

// Stop kills the server by its PID (again: a no-op).
func (s *Server) Stop() {
	s.once.Do(func() { s.cmd.Process.Kill(); s.cmd.Wait() })
}

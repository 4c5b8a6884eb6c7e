package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cache/stores"
	"github.com/wharf-registry/wharf/mirror"
)

// TestSchedulerRunsAPICollections: the admin API's collection runs as a
// job of the one maintenance loop (scheduler.CollectNow), with the
// server's grace; without the loop running it waits, bounded by the
// request, instead of collecting beside it.
func TestSchedulerRunsAPICollections(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	store, err := stores.Open(cache.Options{Dir: dir, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	sched := newScheduler()
	reg := mirror.New(store, mirror.Options{Logger: quiet, Collector: sched})
	defer reg.Close()
	srv := httptest.NewServer(reg)
	defer srv.Close()
	gc := func(timeout time.Duration) (*http.Response, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/api/v1/gc?dry_run=true", nil)
		return http.DefaultClient.Do(req)
	}
	// No loop: the request waits for it, and gives up with its context.
	if resp, err := gc(300 * time.Millisecond); err == nil {
		resp.Body.Close()
		t.Fatalf("a collection ran without the maintenance loop: %s", resp.Status)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg := serveConfig{gcGrace: time.Hour, cache: cache.Options{Dir: dir, UploadTTL: time.Hour}}
	go func() {
		done <- upkeep(ctx, store, reg, cfg, quiet, newRoomMaker(), sched, newOpsMetrics(prometheus.NewRegistry()))
	}()
	resp, err := gc(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		DryRun bool `json:"dry_run"`
	}
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !body.DryRun {
		t.Fatalf("collection through the loop: %s %+v", resp.Status, body)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the maintenance loop did not stop")
	}
}

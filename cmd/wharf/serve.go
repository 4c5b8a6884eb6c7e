package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sync/errgroup"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror"
)

// serveConfig is everything `wharf serve` needs, read once from the CLI.
type serveConfig struct {
	addr            string
	log             *slog.Logger
	shutdownTimeout time.Duration
	cache           cache.Options
	mirror          mirror.Options
}

func serveConfigFrom(c *cli.Context) (serveConfig, error) {
	log, err := newLogger(c.String("log-level"), c.String("log-format"))
	if err != nil {
		return serveConfig{}, err
	}
	return serveConfig{
		addr:            c.String("addr"),
		log:             log,
		shutdownTimeout: c.Duration("shutdown-timeout"),
		cache:           cache.Options{Dir: c.String("data"), UploadTTL: c.Duration("upload-ttl"), Logger: log},
		mirror:          mirror.Options{AllowDelete: c.Bool("allow-delete"), Sendfile: c.Bool("sendfile"), Logger: log},
	}, nil
}

// valueLogGCInterval is how often Badger's value log is compacted.
const valueLogGCInterval = 10 * time.Minute

// serve runs the registry until SIGTERM or SIGINT, then stops accepting,
// lets in-flight requests finish (up to the shutdown timeout) and closes
// the index cleanly.
func serve(parent context.Context, cfg serveConfig) error {
	ctx, stop := signal.NotifyContext(parent, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log := cfg.log
	store, err := cache.Open(cfg.cache)
	if err != nil {
		return err
	}
	defer func() {
		if err := store.Close(); err != nil {
			log.Error("closing index", "err", err)
		}
	}()
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.addr, err)
	}
	srv := &http.Server{
		Handler:           mirror.New(store, cfg.mirror),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if !cfg.mirror.AllowDelete {
		log.Info("deletes are disabled; start with --allow-delete to enable them")
	}
	log.Info("wharf listening", "addr", ln.Addr().String(), "data", cfg.cache.Dir)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down: finishing in-flight requests", "timeout", cfg.shutdownTimeout)
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), cfg.shutdownTimeout)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	g.Go(func() error {
		t := time.NewTicker(valueLogGCInterval)
		defer t.Stop()
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-t.C:
				if err := store.RunValueLogGC(); err != nil {
					log.Warn("index value-log GC", "err", err)
				}
			}
		}
	})
	err = g.Wait()
	log.Info("wharf stopped")
	return err
}

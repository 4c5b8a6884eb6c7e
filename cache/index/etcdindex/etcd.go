// Package etcdindex is a cluster's shared index, in etcd. It implements
// index.Index and the capabilities a cluster needs: Watcher, Locker,
// Members, Compacter and Healther.
package etcdindex

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/wharf-registry/wharf/cache/index"
)

// Index is the index of a cluster, in etcd: the same keys as Badger's
// under Prefix. Transactions read at one revision and commit with a
// compare of every key they read against the revision it had, so two
// nodes' conflicting writes never both land (strictly serializable, as
// etcd's transactions are).
type Index struct {
	cli       *clientv3.Client
	prefix    string
	timeout   time.Duration
	ttl       int64 // the lease's, in seconds
	maxOps    int
	log       *slog.Logger
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	started   int64 // the revision at open: the watch starts after it
	closeOnce sync.Once
	name      string

	// sessMu guards session alone. It may be held across a request to
	// etcd (the lease's grant); mu never is, and nothing that holds mu
	// takes sessMu or calls a method that takes mu (outcome does).
	sessMu  sync.Mutex
	session *concurrency.Session // this node's lease: its locks and membership

	mu        sync.Mutex
	members   map[string]string // live nodes: id → URL (from the watch)
	compactTo int64             // the revision Compact saw last
	healthy   bool              // the last request reached a quorum
	lastErr   string
	events    int64 // changes seen on the watch
	restart   int64 // watch restarts

	reads, writes, conflicts atomic.Int64 // requests sent, and failed compares
}

var (
	_ index.Index     = (*Index)(nil)
	_ index.Watcher   = (*Index)(nil)
	_ index.Locker    = (*Index)(nil)
	_ index.Members   = (*Index)(nil)
	_ index.Compacter = (*Index)(nil)
	_ index.Healther  = (*Index)(nil)
)

// Open connects to the cluster and reads once (a quorum must
// answer).
func Open(o Options) (*Index, error) {
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.MaxOps <= 0 {
		o.MaxOps = 128
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = sessionTTL * time.Second
	}
	if o.Prefix == "" {
		o.Prefix = "wharf/"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	cfg := clientv3.Config{
		Endpoints:            o.Endpoints,
		DialTimeout:          o.Timeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: o.Timeout,
		Username:             o.Username,
		Password:             o.Password,
		Logger:               zap.NewNop(),
		// Requests fail over to another member themselves; the store
		// retries conflicts, not outages.
		MaxUnaryRetries: 2,
		// gRPC's default reconnect backoff grows to 2 minutes: after an
		// outage of half a minute a node would stay cut off for as long
		// again. Members are retried at least every 2 s.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: o.Timeout,
		})},
	}
	if o.TLS {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.CAFile != "" {
			pem, err := os.ReadFile(o.CAFile)
			if err != nil {
				return nil, fmt.Errorf("etcd: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("etcd: %s holds no PEM certificate", o.CAFile)
			}
		}
		if o.CertFile != "" {
			c, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("etcd: %w", err)
			}
			tc.Certificates = []tls.Certificate{c}
		}
		cfg.TLS = tc
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", index.ErrUnavailable, o, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Index{cli: cli, prefix: o.Prefix, timeout: o.Timeout, ttl: int64(max(2, o.LeaseTTL/time.Second)), maxOps: o.MaxOps, log: o.Logger, ctx: ctx, cancel: cancel, name: o.String()}
	rctx, rcancel := context.WithTimeout(ctx, o.Timeout)
	resp, err := cli.Get(rctx, o.Prefix+membersPrefix, clientv3.WithPrefix())
	rcancel()
	if err != nil {
		cancel()
		cli.Close()
		return nil, fmt.Errorf("%w: %s: %v", index.ErrUnavailable, o, err)
	}
	e.started = resp.Header.Revision
	e.members = map[string]string{}
	for _, kv := range resp.Kvs {
		e.members[string(kv.Key[len(o.Prefix)+len(membersPrefix):])] = string(kv.Value)
	}
	e.healthy = true
	return e, nil
}

// String names the cluster and prefix (for logs and the data directory's
// marker).
func (e *Index) String() string { return e.name }

// MaxOps leaves room in etcd's --max-txn-ops for the compares.
func (e *Index) MaxOps() int { return e.maxOps / 2 }

// Close stops the watch, ends the node's lease (its locks and membership
// go at once) and closes the client. A second call does nothing.
func (e *Index) Close() error {
	var err error
	e.closeOnce.Do(func() {
		// The lease is revoked so that the locks go at once; with etcd out
		// of reach that gives up after the TTL (and a grant in flight
		// after the request timeout).
		e.sessMu.Lock()
		if e.session != nil {
			e.session.Close()
		}
		e.sessMu.Unlock()
		e.cancel()
		e.wg.Wait()
		err = e.cli.Close()
	})
	return err
}

// membersPrefix holds one key per live node, on its lease: its id → the
// URL the other nodes reach it at.
const membersPrefix = "members/"

func (e *Index) member(id, url string, gone bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if gone {
		delete(e.members, id)
	} else {
		e.members[id] = url
	}
}

// Members lists the live nodes, id → URL, as the change feed last said.
func (e *Index) Members() map[string]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.members)
}

// Join registers this node as id, reachable at url, for as long as the
// process lives: on its lease, made again if it is lost.
func (e *Index) Join(id, url string) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for e.ctx.Err() == nil {
			s, err := e.leased()
			if err == nil {
				ctx, cancel := context.WithTimeout(e.ctx, e.timeout)
				_, err = e.cli.Put(ctx, e.prefix+membersPrefix+id, url, clientv3.WithLease(s.Lease()))
				cancel()
				if err == nil {
					e.member(id, url, false) // at once, before the feed says so
					select {
					case <-s.Done(): // lease lost: join again
					case <-e.ctx.Done():
						return
					}
				}
			}
			if err != nil {
				e.log.Warn("cluster: registering this node", "err", err)
			}
			select {
			case <-e.ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
}

// CompactHistory discards etcd's history up to the revision this method saw on
// its previous call (nothing on the first): called every few minutes, it
// keeps that much history for the transactions and watches in flight,
// and keeps etcd's database from growing with every write until its
// quota stops all writes. Any node may do it; doing it twice is harmless.
// (The space comes back in each member's file after `etcdctl defrag`.)
func (e *Index) CompactHistory() (int64, error) {
	ctx, cancel := context.WithTimeout(e.ctx, e.timeout)
	defer cancel()
	resp, err := e.cli.Get(ctx, e.prefix+"s/alive")
	if err = e.outcome("read", err); err != nil {
		return 0, err
	}
	e.mu.Lock()
	prev := e.compactTo
	e.compactTo = resp.Header.Revision
	e.mu.Unlock()
	if prev == 0 {
		return 0, nil
	}
	_, err = e.cli.Compact(ctx, prev)
	if errors.Is(err, rpctypes.ErrCompacted) || errors.Is(err, rpctypes.ErrGRPCCompacted) {
		return prev, nil // another node did
	}
	return prev, e.outcome("compact", err)
}

// Compact is CompactHistory for index.Compacter.
func (e *Index) Compact() error {
	_, err := e.CompactHistory()
	return err
}

// sessionTTL is how long a dead node's locks and membership outlive it,
// by default.
const sessionTTL = 10 // seconds

// leased returns this node's session, made on first use (again after
// its lease was lost: etcd was out of reach for longer than its TTL).
// Concurrent callers wait for one grant, bounded by the request timeout.
func (e *Index) leased() (*concurrency.Session, error) {
	e.sessMu.Lock()
	defer e.sessMu.Unlock()
	if e.ctx.Err() != nil {
		return nil, fmt.Errorf("%w (closed)", index.ErrUnavailable)
	}
	if e.session != nil {
		select {
		case <-e.session.Done():
			e.session.Orphan() // its keep-alive already ended; stop what is left
			e.session = nil
		default:
			return e.session, nil
		}
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.timeout)
	defer cancel()
	lease, err := e.cli.Grant(ctx, e.ttl)
	if err != nil {
		return nil, e.outcome("lease", err)
	}
	s, err := concurrency.NewSession(e.cli, concurrency.WithLease(lease.ID), concurrency.WithContext(e.ctx))
	if err != nil {
		return nil, e.outcome("lease", err)
	}
	e.session = s
	return s, nil
}

// TryLock takes the cluster-wide lock name, held until release or until
// this node's lease ends (it died, or lost etcd for its TTL).
func (e *Index) TryLock(name string) (func(), error) {
	s, err := e.leased()
	if err != nil {
		return nil, err
	}
	m := concurrency.NewMutex(s, e.prefix+"locks/"+name)
	ctx, cancel := context.WithTimeout(e.ctx, e.timeout)
	defer cancel()
	if err := m.TryLock(ctx); errors.Is(err, concurrency.ErrLocked) {
		return nil, index.ErrLockHeld
	} else if err != nil {
		return nil, e.outcome("lock", err)
	}
	return func() {
		ctx, cancel := context.WithTimeout(e.ctx, e.timeout)
		defer cancel()
		m.Unlock(ctx)
	}, nil
}

// Health reports the outcome of the last request and the watch's counts.
func (e *Index) Health() index.Health {
	e.mu.Lock()
	defer e.mu.Unlock()
	return index.Health{Endpoints: e.cli.Endpoints(), Healthy: e.healthy, LastError: e.lastErr, Events: e.events, Restarts: e.restart,
		Reads: e.reads.Load(), Writes: e.writes.Load(), Conflicts: e.conflicts.Load()}
}

// outcome records a request's result and classifies its error.
func (e *Index) outcome(op string, err error) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err == nil {
		e.healthy = true
		return nil
	}
	switch {
	case errors.Is(err, rpctypes.ErrCompacted), errors.Is(err, rpctypes.ErrGRPCCompacted):
		return index.ErrConflict // the snapshot is gone: start over
	case errors.Is(err, rpctypes.ErrGRPCTooManyOps), errors.Is(err, rpctypes.ErrGRPCRequestTooLarge):
		return index.Err(op, err)
	}
	e.healthy, e.lastErr = false, err.Error()
	return fmt.Errorf("%w (%s: %v)", index.ErrUnavailable, op, err)
}

// Abandon stops renewing this node's lease without revoking it, as a
// process killed with SIGKILL does: for tests of a node's death.
func (e *Index) Abandon() {
	e.sessMu.Lock()
	defer e.sessMu.Unlock()
	if e.session != nil {
		e.session.Orphan()
		e.session = nil
	}
}

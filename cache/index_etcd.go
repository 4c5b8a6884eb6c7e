package cache

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// EtcdOptions names the etcd cluster that holds a Wharf cluster's index.
type EtcdOptions struct {
	Endpoints []string // host:port of each member
	Prefix    string   // key namespace, ending in "/" ("wharf/")
	// TLS: a client certificate and key, and the CA that signed the
	// members' certificates (empty: plain gRPC).
	CertFile, KeyFile, CAFile string
	TLS                       bool // TLS with the system roots when no CAFile
	Username, Password        string
	// Timeout bounds one request (5s): past it, or without a quorum, the
	// request fails with ErrIndexUnavailable.
	Timeout time.Duration
	// MaxOps is the members' --max-txn-ops (128, etcd's default).
	MaxOps int
	// LeaseTTL is how long a node's locks and membership outlive it, or
	// its losing etcd (10s; whole seconds, at least 2).
	LeaseTTL time.Duration
	Logger   *slog.Logger
}

// ParseEtcdURL reads etcd://host:port[,host:port…][/prefix][?tls=true&ca=…&cert=…&key=…&max-txn-ops=N&timeout=5s&lease=10s].
// The user name and password come from the environment (ETCD_USERNAME,
// ETCD_PASSWORD), never from the URL.
func ParseEtcdURL(raw string) (EtcdOptions, error) {
	rest, ok := strings.CutPrefix(raw, "etcd://")
	if !ok {
		return EtcdOptions{}, fmt.Errorf("%q: want etcd://host:port[,host:port…][/prefix]", raw)
	}
	rest, query, _ := strings.Cut(rest, "?")
	hosts, path, _ := strings.Cut(rest, "/")
	o := EtcdOptions{Prefix: "wharf/"}
	for _, h := range strings.Split(hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			o.Endpoints = append(o.Endpoints, h)
		}
	}
	if len(o.Endpoints) == 0 {
		return EtcdOptions{}, fmt.Errorf("%q: no host:port", raw)
	}
	if p := strings.Trim(path, "/"); p != "" {
		o.Prefix = p + "/"
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return EtcdOptions{}, fmt.Errorf("%q: %v", raw, err)
	}
	for k, vs := range q {
		v := vs[len(vs)-1]
		switch k {
		case "tls":
			if o.TLS, err = strconv.ParseBool(v); err != nil {
				return EtcdOptions{}, fmt.Errorf("%q: tls=%q", raw, v)
			}
		case "ca":
			o.CAFile, o.TLS = v, true
		case "cert":
			o.CertFile, o.TLS = v, true
		case "key":
			o.KeyFile, o.TLS = v, true
		case "max-txn-ops":
			if o.MaxOps, err = strconv.Atoi(v); err != nil || o.MaxOps < 16 {
				return EtcdOptions{}, fmt.Errorf("%q: max-txn-ops=%q: want a number ≥ 16", raw, v)
			}
		case "timeout":
			if o.Timeout, err = time.ParseDuration(v); err != nil || o.Timeout <= 0 {
				return EtcdOptions{}, fmt.Errorf("%q: timeout=%q", raw, v)
			}
		case "lease":
			if o.LeaseTTL, err = time.ParseDuration(v); err != nil || o.LeaseTTL < 2*time.Second {
				return EtcdOptions{}, fmt.Errorf("%q: lease=%q: want a duration of at least 2s", raw, v)
			}
		default:
			return EtcdOptions{}, fmt.Errorf("%q: unknown option %q (tls, ca, cert, key, max-txn-ops, timeout, lease)", raw, k)
		}
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return EtcdOptions{}, fmt.Errorf("%q: cert= and key= go together", raw)
	}
	o.Username, o.Password = os.Getenv("ETCD_USERNAME"), os.Getenv("ETCD_PASSWORD")
	return o, nil
}

// String is the URL form, without credentials.
func (o EtcdOptions) String() string {
	return "etcd://" + strings.Join(o.Endpoints, ",") + "/" + strings.TrimSuffix(o.Prefix, "/")
}

// EtcdIndex is the index of a cluster, in etcd: the same keys as Badger's
// under Prefix. Transactions read at one revision and commit with a
// compare of every key they read against the revision it had, so two
// nodes' conflicting writes never both land (strictly serializable, as
// etcd's transactions are).
type EtcdIndex struct {
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
	_ Index        = (*EtcdIndex)(nil)
	_ IndexWatcher = (*EtcdIndex)(nil)
)

// OpenEtcdIndex connects to the cluster and reads once (a quorum must
// answer).
func OpenEtcdIndex(o EtcdOptions) (*EtcdIndex, error) {
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
		return nil, fmt.Errorf("%w: %s: %v", ErrIndexUnavailable, o, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &EtcdIndex{cli: cli, prefix: o.Prefix, timeout: o.Timeout, ttl: int64(max(2, o.LeaseTTL/time.Second)), maxOps: o.MaxOps, log: o.Logger, ctx: ctx, cancel: cancel, name: o.String()}
	rctx, rcancel := context.WithTimeout(ctx, o.Timeout)
	resp, err := cli.Get(rctx, o.Prefix+membersPrefix, clientv3.WithPrefix())
	rcancel()
	if err != nil {
		cancel()
		cli.Close()
		return nil, fmt.Errorf("%w: %s: %v", ErrIndexUnavailable, o, err)
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
func (e *EtcdIndex) String() string { return e.name }

// MaxOps leaves room in etcd's --max-txn-ops for the compares.
func (e *EtcdIndex) MaxOps() int { return e.maxOps / 2 }

// Close stops the watch, ends the node's lease (its locks and membership
// go at once) and closes the client. A second call does nothing.
func (e *EtcdIndex) Close() error {
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

func (e *EtcdIndex) member(id, url string, gone bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if gone {
		delete(e.members, id)
	} else {
		e.members[id] = url
	}
}

// Members lists the live nodes, id → URL, as the change feed last said.
func (e *EtcdIndex) Members() map[string]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.members)
}

// Join registers this node as id, reachable at url, for as long as the
// process lives: on its lease, made again if it is lost.
func (e *EtcdIndex) Join(id, url string) {
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

// Compact discards etcd's history up to the revision this method saw on
// its previous call (nothing on the first): called every few minutes, it
// keeps that much history for the transactions and watches in flight,
// and keeps etcd's database from growing with every write until its
// quota stops all writes. Any node may do it; doing it twice is harmless.
// (The space comes back in each member's file after `etcdctl defrag`.)
func (e *EtcdIndex) Compact() (int64, error) {
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

// sessionTTL is how long a dead node's locks and membership outlive it,
// by default.
const sessionTTL = 10 // seconds

// leased returns this node's session, made on first use (again after
// its lease was lost: etcd was out of reach for longer than its TTL).
// Concurrent callers wait for one grant, bounded by the request timeout.
func (e *EtcdIndex) leased() (*concurrency.Session, error) {
	e.sessMu.Lock()
	defer e.sessMu.Unlock()
	if e.ctx.Err() != nil {
		return nil, fmt.Errorf("%w (closed)", ErrIndexUnavailable)
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
func (e *EtcdIndex) TryLock(name string) (func(), error) {
	s, err := e.leased()
	if err != nil {
		return nil, err
	}
	m := concurrency.NewMutex(s, e.prefix+"locks/"+name)
	ctx, cancel := context.WithTimeout(e.ctx, e.timeout)
	defer cancel()
	if err := m.TryLock(ctx); errors.Is(err, concurrency.ErrLocked) {
		return nil, ErrCollectorElsewhere
	} else if err != nil {
		return nil, e.outcome("lock", err)
	}
	return func() {
		ctx, cancel := context.WithTimeout(e.ctx, e.timeout)
		defer cancel()
		m.Unlock(ctx)
	}, nil
}

// EtcdHealth is what the status page and metrics show of the index.
type EtcdHealth struct {
	Endpoints []string
	Healthy   bool
	LastError string
	Events    int64 // changes received on the watch
	Restarts  int64 // watch restarts (a member lost, compaction)
	// Requests this node sent: reads (one per Get, one per scanned page)
	// and write transactions, and the writes that lost a compare.
	Reads, Writes, Conflicts int64
}

// Health reports the outcome of the last request and the watch's counts.
func (e *EtcdIndex) Health() EtcdHealth {
	e.mu.Lock()
	defer e.mu.Unlock()
	return EtcdHealth{Endpoints: e.cli.Endpoints(), Healthy: e.healthy, LastError: e.lastErr, Events: e.events, Restarts: e.restart,
		Reads: e.reads.Load(), Writes: e.writes.Load(), Conflicts: e.conflicts.Load()}
}

// outcome records a request's result and classifies its error.
func (e *EtcdIndex) outcome(op string, err error) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err == nil {
		e.healthy = true
		return nil
	}
	switch {
	case errors.Is(err, rpctypes.ErrCompacted), errors.Is(err, rpctypes.ErrGRPCCompacted):
		return errConflict // the snapshot is gone: start over
	case errors.Is(err, rpctypes.ErrGRPCTooManyOps), errors.Is(err, rpctypes.ErrGRPCRequestTooLarge):
		return indexErr(op, err)
	}
	e.healthy, e.lastErr = false, err.Error()
	return fmt.Errorf("%w (%s: %v)", ErrIndexUnavailable, op, err)
}

func (e *EtcdIndex) View(fn func(Txn) error) error {
	return fn(&etcdTxn{e: e})
}

func (e *EtcdIndex) Update(fn func(Txn) error) error {
	t := &etcdTxn{e: e, reads: map[string]int64{}, writes: map[string]*[]byte{}}
	if err := fn(t); err != nil {
		return err
	}
	return t.commit()
}

// etcdTxn reads at one revision (the first read's, a linearizable one) and
// buffers its writes until commit.
type etcdTxn struct {
	e      *EtcdIndex
	rev    int64
	reads  map[string]int64   // key → mod revision when read (0: absent); nil in a View
	writes map[string]*[]byte // key → value (nil: delete)
	order  []string           // keys of writes, first write first
}

func (t *etcdTxn) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.e.ctx, t.e.timeout)
}

func (t *etcdTxn) get(key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if t.rev > 0 {
		opts = append(opts, clientv3.WithRev(t.rev))
	}
	ctx, cancel := t.ctx()
	defer cancel()
	t.e.reads.Add(1)
	resp, err := t.e.cli.Get(ctx, t.e.prefix+key, opts...)
	if err = t.e.outcome("read", err); err != nil {
		return nil, err
	}
	if t.rev == 0 {
		t.rev = resp.Header.Revision
	}
	return resp, nil
}

func (t *etcdTxn) Get(key []byte) ([]byte, error) {
	k := string(key)
	if v, ok := t.writes[k]; ok {
		if v == nil {
			return nil, errNotFound
		}
		return append([]byte(nil), *v...), nil
	}
	resp, err := t.get(k)
	if err != nil {
		return nil, err
	}
	var mod int64
	if len(resp.Kvs) > 0 {
		mod = resp.Kvs[0].ModRevision
	}
	if t.reads != nil {
		if _, seen := t.reads[k]; !seen {
			t.reads[k] = mod
		}
	}
	if len(resp.Kvs) == 0 {
		return nil, errNotFound
	}
	return resp.Kvs[0].Value, nil
}

func (t *etcdTxn) Set(key, val []byte) error {
	if t.writes == nil {
		return errors.New("cache: index: write in a read-only transaction")
	}
	v := append([]byte(nil), val...)
	t.put(string(key), &v)
	return nil
}

func (t *etcdTxn) Delete(key []byte) error {
	if t.writes == nil {
		return errors.New("cache: index: write in a read-only transaction")
	}
	t.put(string(key), nil)
	return nil
}

func (t *etcdTxn) put(k string, v *[]byte) {
	if _, ok := t.writes[k]; !ok {
		t.order = append(t.order, k)
	}
	t.writes[k] = v
}

// scanPage is how many keys one range request brings.
const scanPage = 512

func (t *etcdTxn) Scan(prefix, from []byte, keysOnly bool, fn func(key, val []byte) error) error {
	start := string(prefix)
	if from != nil && string(from) > start {
		start = string(from)
	}
	end := clientv3.GetPrefixRangeEnd(t.e.prefix + string(prefix))
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(scanPage),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
		if keysOnly {
			opts = append(opts, clientv3.WithKeysOnly())
		}
		resp, err := t.get(start, opts...)
		if err != nil {
			return err
		}
		for _, kv := range resp.Kvs {
			err := fn(kv.Key[len(t.e.prefix):], kv.Value)
			if errors.Is(err, errStopScan) {
				return nil
			} else if err != nil {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key[len(t.e.prefix):]) + "\x00"
	}
}

// commit writes the buffered writes if no key the transaction read has
// changed since; errConflict if one did.
func (t *etcdTxn) commit() error {
	if len(t.order) == 0 {
		return nil
	}
	if len(t.order) > t.e.maxOps {
		return indexErr("write", fmt.Errorf("%d writes in one transaction: etcd's --max-txn-ops is %d", len(t.order), t.e.maxOps))
	}
	ops := make([]clientv3.Op, 0, len(t.order))
	for _, k := range t.order {
		if v := t.writes[k]; v != nil {
			ops = append(ops, clientv3.OpPut(t.e.prefix+k, string(*v)))
		} else {
			ops = append(ops, clientv3.OpDelete(t.e.prefix+k))
		}
	}
	ctx, cancel := t.ctx()
	defer cancel()
	t.e.writes.Add(1)
	resp, err := t.e.cli.Txn(ctx).If(t.compares()...).Then(ops...).Commit()
	if err = t.e.outcome("write", err); err != nil {
		return err
	}
	if !resp.Succeeded {
		t.e.conflicts.Add(1)
		return errConflict
	}
	return nil
}

// compares checks every key read against the revision it had. When there
// are more than etcd takes in one transaction, the keys of one kind and
// repository ("l/repo\x00…") are checked together: nothing in that range
// changed since the transaction's revision — coarser (a conflict may be
// one that did not matter, and is retried), except that a deletion inside
// such a range goes unseen. Blob records ("b/") are always checked one by
// one: the collector deletes them.
func (t *etcdTxn) compares() []clientv3.Cmp {
	keys := make([]string, 0, len(t.reads))
	for k := range t.reads {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	exact := func(k string) clientv3.Cmp {
		return clientv3.Compare(clientv3.ModRevision(t.e.prefix+k), "=", t.reads[k])
	}
	if len(keys) <= t.e.maxOps {
		cmps := make([]clientv3.Cmp, 0, len(keys))
		for _, k := range keys {
			cmps = append(cmps, exact(k))
		}
		return cmps
	}
	var cmps []clientv3.Cmp
	groups := map[string]bool{}
	for _, k := range keys {
		if strings.HasPrefix(k, "b/") {
			cmps = append(cmps, exact(k))
			continue
		}
		g := k
		if i := strings.IndexByte(k, 0); i >= 0 {
			g = k[:i+1]
		} else if i := strings.IndexByte(k, '/'); i >= 0 {
			g = k[:i+1]
		}
		if !groups[g] {
			groups[g] = true
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(t.e.prefix+g), "<", t.rev+1).
				WithRange(clientv3.GetPrefixRangeEnd(t.e.prefix+g)))
		}
	}
	return cmps
}

// Watch follows every change under the prefix from the revision read at
// open, restarting (from where it was) when a member is lost; after a
// compaction took changes it had not seen, it calls lost.
func (e *EtcdIndex) Watch(fn func(key, val []byte, deleted bool), lost func()) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		next := e.started + 1
		for e.ctx.Err() == nil {
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(e.ctx))
			for resp := range e.cli.Watch(wctx, e.prefix, clientv3.WithPrefix(), clientv3.WithRev(next)) {
				if resp.CompactRevision > 0 {
					e.log.Warn("index: changes were compacted away before this node saw them; dropping its caches",
						"from_revision", next, "compacted_to", resp.CompactRevision)
					next = resp.CompactRevision
					lost()
					break
				}
				if err := resp.Err(); err != nil {
					break
				}
				for _, ev := range resp.Events {
					key := ev.Kv.Key[len(e.prefix):]
					if id, ok := bytes.CutPrefix(key, []byte(membersPrefix)); ok {
						e.member(string(id), string(ev.Kv.Value), ev.Type == clientv3.EventTypeDelete)
					} else {
						fn(key, ev.Kv.Value, ev.Type == clientv3.EventTypeDelete)
					}
					next = ev.Kv.ModRevision + 1
				}
				e.mu.Lock()
				e.events += int64(len(resp.Events))
				e.mu.Unlock()
			}
			cancel()
			if e.ctx.Err() != nil {
				return
			}
			e.mu.Lock()
			e.restart++
			e.mu.Unlock()
			select {
			case <-e.ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
}

package etcdindex

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wharf-registry/wharf/cache/index"
)

func (e *Index) View(fn func(index.Txn) error) error {
	return fn(&etcdTxn{e: e})
}

func (e *Index) Update(fn func(index.Txn) error) error {
	t := &etcdTxn{e: e, reads: map[string]int64{}, writes: map[string]*[]byte{}}
	if err := fn(t); err != nil {
		return err
	}
	return t.commit()
}

// etcdTxn reads at one revision (the first read's, a linearizable one) and
// buffers its writes until commit.
type etcdTxn struct {
	e      *Index
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
			return nil, index.ErrNotFound
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
		return nil, index.ErrNotFound
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
			if errors.Is(err, index.ErrStopScan) {
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
// changed since; index.ErrConflict if one did.
func (t *etcdTxn) commit() error {
	if len(t.order) == 0 {
		return nil
	}
	if len(t.order) > t.e.maxOps {
		return index.Err("write", fmt.Errorf("%d writes in one transaction: etcd's --max-txn-ops is %d", len(t.order), t.e.maxOps))
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
		return index.ErrConflict
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
func (e *Index) Watch(fn func(key, val []byte, deleted bool), lost func()) {
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

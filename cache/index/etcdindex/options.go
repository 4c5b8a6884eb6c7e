package etcdindex

import (
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Options names the etcd cluster that holds a Wharf cluster's index.
type Options struct {
	Endpoints []string // host:port of each member
	Prefix    string   // key namespace, ending in "/" ("wharf/")
	// TLS: a client certificate and key, and the CA that signed the
	// members' certificates (empty: plain gRPC).
	CertFile, KeyFile, CAFile string
	TLS                       bool // TLS with the system roots when no CAFile
	Username, Password        string
	// Timeout bounds one request (5s): past it, or without a quorum, the
	// request fails with index.ErrUnavailable.
	Timeout time.Duration
	// MaxOps is the members' --max-txn-ops (128, etcd's default).
	MaxOps int
	// LeaseTTL is how long a node's locks and membership outlive it, or
	// its losing etcd (10s; whole seconds, at least 2).
	LeaseTTL time.Duration
	Logger   *slog.Logger
}

// ParseURL reads etcd://host:port[,host:port…][/prefix][?tls=true&ca=…&cert=…&key=…&max-txn-ops=N&timeout=5s&lease=10s].
// The user name and password come from the environment (ETCD_USERNAME,
// ETCD_PASSWORD), never from the URL.
func ParseURL(raw string) (Options, error) {
	rest, ok := strings.CutPrefix(raw, "etcd://")
	if !ok {
		return Options{}, fmt.Errorf("%q: want etcd://host:port[,host:port…][/prefix]", raw)
	}
	rest, query, _ := strings.Cut(rest, "?")
	hosts, path, _ := strings.Cut(rest, "/")
	o := Options{Prefix: "wharf/"}
	for _, h := range strings.Split(hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			o.Endpoints = append(o.Endpoints, h)
		}
	}
	if len(o.Endpoints) == 0 {
		return Options{}, fmt.Errorf("%q: no host:port", raw)
	}
	if p := strings.Trim(path, "/"); p != "" {
		o.Prefix = p + "/"
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return Options{}, fmt.Errorf("%q: %v", raw, err)
	}
	for k, vs := range q {
		v := vs[len(vs)-1]
		switch k {
		case "tls":
			if o.TLS, err = strconv.ParseBool(v); err != nil {
				return Options{}, fmt.Errorf("%q: tls=%q", raw, v)
			}
		case "ca":
			o.CAFile, o.TLS = v, true
		case "cert":
			o.CertFile, o.TLS = v, true
		case "key":
			o.KeyFile, o.TLS = v, true
		case "max-txn-ops":
			if o.MaxOps, err = strconv.Atoi(v); err != nil || o.MaxOps < 16 {
				return Options{}, fmt.Errorf("%q: max-txn-ops=%q: want a number ≥ 16", raw, v)
			}
		case "timeout":
			if o.Timeout, err = time.ParseDuration(v); err != nil || o.Timeout <= 0 {
				return Options{}, fmt.Errorf("%q: timeout=%q", raw, v)
			}
		case "lease":
			if o.LeaseTTL, err = time.ParseDuration(v); err != nil || o.LeaseTTL < 2*time.Second {
				return Options{}, fmt.Errorf("%q: lease=%q: want a duration of at least 2s", raw, v)
			}
		default:
			return Options{}, fmt.Errorf("%q: unknown option %q (tls, ca, cert, key, max-txn-ops, timeout, lease)", raw, k)
		}
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return Options{}, fmt.Errorf("%q: cert= and key= go together", raw)
	}
	o.Username, o.Password = os.Getenv("ETCD_USERNAME"), os.Getenv("ETCD_PASSWORD")
	return o, nil
}

// String is the URL form, without credentials.
func (o Options) String() string {
	return "etcd://" + strings.Join(o.Endpoints, ",") + "/" + strings.TrimSuffix(o.Prefix, "/")
}

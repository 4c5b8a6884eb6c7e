package s3blobs

import (
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
)

// Options names the S3-compatible bucket that holds committed blobs.
type Options struct {
	Endpoint             string // host:port
	Bucket               string
	Prefix               string // key prefix: "" or ending in "/"
	Region               string
	AccessKey, SecretKey string
	Insecure             bool   // plain HTTP (a server on the same host or LAN)
	PartSize             uint64 // uploads above this are multipart, in parts of it (16 MiB)
	// Owner, when set, is who claims the prefix: a cluster's id, which
	// its nodes share (the default is an id kept in the data directory).
	Owner string
	// Logger says when the store stops and starts answering.
	Logger *slog.Logger
}

// ParseURL reads s3://bucket[/prefix]?endpoint=host:port[&region=r][&insecure=true][&part-size=bytes].
// The endpoint may also be a URL, as registry:2's regionendpoint and most
// S3 tools write it: http://host:port is plain HTTP (insecure), https://
// is TLS. Credentials are not part of it.
func ParseURL(raw string) (Options, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Options{}, err
	}
	if u.Scheme != "s3" || u.Host == "" {
		return Options{}, fmt.Errorf("%q: want s3://bucket[/prefix]?endpoint=host:port", raw)
	}
	q := u.Query()
	o := Options{Bucket: u.Host, Prefix: strings.Trim(u.Path, "/"), Endpoint: q.Get("endpoint"), Region: q.Get("region")}
	if o.Prefix != "" {
		o.Prefix += "/"
	}
	if o.Endpoint == "" {
		return Options{}, fmt.Errorf("%q: no endpoint=host:port", raw)
	}
	if scheme, hostPort, ok := strings.Cut(o.Endpoint, "://"); ok {
		hostPort = strings.TrimSuffix(hostPort, "/")
		if (scheme != "http" && scheme != "https") || hostPort == "" || strings.ContainsAny(hostPort, "/?#") {
			return Options{}, fmt.Errorf("%q: endpoint=%q: want host:port, http://host:port or https://host:port", raw, o.Endpoint)
		}
		o.Endpoint, o.Insecure = hostPort, scheme == "http"
	}
	if v := q.Get("insecure"); v != "" {
		insecure, err := strconv.ParseBool(v)
		if err != nil {
			return Options{}, fmt.Errorf("%q: insecure=%q", raw, v)
		}
		if strings.Contains(q.Get("endpoint"), "://") && insecure != o.Insecure {
			return Options{}, fmt.Errorf("%q: insecure=%s contradicts the endpoint's scheme", raw, v)
		}
		o.Insecure = insecure
	}
	if v := q.Get("part-size"); v != "" {
		if o.PartSize, err = strconv.ParseUint(v, 10, 64); err != nil || o.PartSize < 5<<20 {
			return Options{}, fmt.Errorf("%q: part-size=%q: want bytes, at least 5 MiB", raw, v)
		}
	}
	return o, nil
}

func (o Options) String() string {
	return "s3://" + o.Bucket + "/" + o.Prefix + "?endpoint=" + o.Endpoint
}

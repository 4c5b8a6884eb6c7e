package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cache/blobs/s3blobs"
	"github.com/wharf-registry/wharf/cache/index/etcdindex"
	"github.com/wharf-registry/wharf/cache/stores"
)

// openStore opens the content store on the backends cfg names: the index
// (etcd, shared by a cluster, or Badger under the data directory) and the
// blobs (a bucket, or files under the data directory).
func openStore(cfg serveConfig) (*cache.Store, error) {
	if cfg.index != nil {
		ix, err := etcdindex.Open(*cfg.index)
		if err != nil {
			return nil, err
		}
		cfg.cache.Index = ix
		cfg.log.Info("index in etcd, shared with the cluster's other nodes", "index", ix.String())
	}
	if cfg.blobStore != nil {
		cfg.cache.OpenBlobs = stores.S3(*cfg.blobStore)
	}
	store, err := stores.Open(cfg.cache)
	if err != nil && cfg.cache.Index != nil {
		cfg.cache.Index.Close()
	}
	return store, err
}

// sharedIndex reads --index: nil for Badger under --data, or the etcd
// cluster a cluster's nodes share, which only makes sense with blobs they
// share too.
func sharedIndex(raw string, sharedBlobs bool, log *slog.Logger) (*etcdindex.Options, error) {
	if raw == "" {
		return nil, nil
	}
	o, err := etcdindex.ParseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("--index: %w", err)
	}
	if !sharedBlobs {
		return nil, errors.New("--index: the nodes sharing an index must share the blobs too: give --blob-store s3://…")
	}
	o.Logger = log
	return &o, nil
}

// blobStore reads --blob-store: nil for the files under --data, or the S3
// bucket with the usual AWS credential variables.
func blobStore(c *cli.Context) (*s3blobs.Options, error) {
	raw := c.String("blob-store")
	if raw == "" {
		return nil, nil
	}
	o, err := s3blobs.ParseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("--blob-store: %w", err)
	}
	o.AccessKey, o.SecretKey = c.String("blob-store-access-key"), c.String("blob-store-secret-key")
	if o.AccessKey == "" || o.SecretKey == "" {
		return nil, errors.New("--blob-store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or blob-store-access-key and blob-store-secret-key in the --config file)")
	}
	if o.Region == "" {
		o.Region = os.Getenv("AWS_REGION")
	}
	return &o, nil
}

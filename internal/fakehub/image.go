package fakehub

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// Media types the hub serves.
const (
	MediaTypeDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerConfig   = "application/vnd.docker.container.image.v1+json"
	MediaTypeDockerLayer    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	MediaTypeOCIIndex       = "application/vnd.oci.image.index.v1+json"
	MediaTypeOCIManifest    = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeOCIConfig      = "application/vnd.oci.image.config.v1+json"
	MediaTypeOCILayer       = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// ImageSpec describes an image to generate.
type ImageSpec struct {
	Platforms []string // "linux/amd64", ...; one manifest per platform under an index
	Layers    int      // layers per platform
	LayerSize int      // bytes of random file content per layer
	OCI       bool     // OCI media types instead of Docker's
	Seed      uint64   // content seed: equal specs and seeds give equal images
}

// Image is a generated multi-platform image.
type Image struct {
	Index     digest.Digest              // the index (manifest list) digest
	Manifests map[string]digest.Digest   // platform → manifest digest
	Configs   map[string]digest.Digest   // platform → config digest (dockerd's image ID)
	Layers    map[string][]digest.Digest // platform → layer digests
	Blobs     []digest.Digest            // every config and layer, all platforms
	Size      int64                      // bytes of all blobs and manifests
}

type descriptor struct {
	MediaType string            `json:"mediaType"`
	Digest    digest.Digest     `json:"digest"`
	Size      int64             `json:"size"`
	Platform  map[string]string `json:"platform,omitempty"`
}

// GenerateImage builds img: real gzipped tar layers (dockerd unpacks them)
// whose configs carry the right diff_ids.
func GenerateImage(spec ImageSpec) (*Image, map[digest.Digest][]byte, map[digest.Digest]string) {
	blobs := map[digest.Digest][]byte{}
	manifests := map[digest.Digest]string{} // digest → media type; bodies in blobs
	mt := struct{ index, manifest, config, layer string }{MediaTypeDockerList, MediaTypeDockerManifest, MediaTypeDockerConfig, MediaTypeDockerLayer}
	if spec.OCI {
		mt = struct{ index, manifest, config, layer string }{MediaTypeOCIIndex, MediaTypeOCIManifest, MediaTypeOCIConfig, MediaTypeOCILayer}
	}
	img := &Image{Manifests: map[string]digest.Digest{}, Configs: map[string]digest.Digest{}, Layers: map[string][]digest.Digest{}}
	put := func(mediaType string, b []byte) descriptor {
		d := digest.FromBytes(b)
		blobs[d] = b
		img.Size += int64(len(b))
		return descriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}
	}
	rng := rand.New(rand.NewPCG(spec.Seed, spec.Seed^0x5eed))
	var children []descriptor
	for pi, platform := range spec.Platforms {
		os, arch, _ := strings.Cut(platform, "/")
		var layers []descriptor
		var diffIDs []digest.Digest
		for l := 0; l < spec.Layers; l++ {
			tarball, gz := layer(rng, fmt.Sprintf("p%d-l%d.bin", pi, l), spec.LayerSize)
			diffIDs = append(diffIDs, digest.FromBytes(tarball))
			d := put(mt.layer, gz)
			layers = append(layers, d)
			img.Blobs = append(img.Blobs, d.Digest)
			img.Layers[platform] = append(img.Layers[platform], d.Digest)
		}
		cfg, _ := json.Marshal(map[string]any{
			"architecture": arch, "os": os, "created": "2026-01-01T00:00:00Z",
			"config": map[string]any{"Cmd": []string{"/p.bin"}},
			"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
		})
		c := put(mt.config, cfg)
		img.Blobs = append(img.Blobs, c.Digest)
		img.Configs[platform] = c.Digest
		man, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mt.manifest, "config": c, "layers": layers})
		m := put(mt.manifest, man)
		manifests[m.Digest] = mt.manifest
		m.Platform = map[string]string{"os": os, "architecture": arch}
		children = append(children, m)
		img.Manifests[platform] = m.Digest
	}
	idx, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mt.index, "manifests": children})
	i := put(mt.index, idx)
	manifests[i.Digest] = mt.index
	img.Index = i.Digest
	return img, blobs, manifests
}

// layer returns a tar holding one file of n random bytes, and its gzip
// (stored, not compressed: random data does not shrink and this is fast).
func layer(rng *rand.Rand, name string, n int) (tarball, gz []byte) {
	content := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8; j++ {
			content[i+j] = byte(v >> (8 * j))
		}
	}
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(n), ModTime: time.Unix(1700000000, 0)})
	tw.Write(content)
	tw.Close()
	var zb bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&zb, gzip.NoCompression)
	zw.Write(tb.Bytes())
	zw.Close()
	return tb.Bytes(), zb.Bytes()
}

package cache

import (
	"encoding/json"
	"mime"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/wharf-registry/wharf/cache/blobs"
)

// Manifest media types Wharf accepts on push: OCI's, and Docker's schema 2.
const (
	MediaTypeOCIManifest    = ocispec.MediaTypeImageManifest
	MediaTypeOCIIndex       = ocispec.MediaTypeImageIndex
	MediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// MaxManifestSize is the largest manifest accepted (4 MiB, as registry:2).
const MaxManifestSize = 4 << 20

// Descriptor is an OCI content descriptor (referrers, index entries).
type Descriptor = ocispec.Descriptor

type manifestDoc struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType"`
	Config        *Descriptor       `json:"config"`
	Layers        []Descriptor      `json:"layers"`
	Manifests     []Descriptor      `json:"manifests"`
	Subject       *Descriptor       `json:"subject"`
	Annotations   map[string]string `json:"annotations"`
}

// parsedManifest is what the store needs to know of a pushed manifest.
type parsedManifest struct {
	mediaType    string
	artifactType string // as the referrers API reports it
	subject      *Descriptor
	annotations  map[string]string
	blobs        []digest.Digest // config and layers: must be linked in the repo
	children     []digest.Digest // index entries: must be manifests in the repo
	entries      []Descriptor    // index entries, with their platforms
}

// ManifestInfo is what a manifest references, as ParseManifest reads it.
type ManifestInfo struct {
	MediaType string
	// Blobs are the config and the distributable layers of an image
	// manifest; Manifests the entries of an index, with their platforms.
	Blobs     []digest.Digest
	Manifests []Descriptor
}

// ParseManifest checks manifest body (of mediaType, or the document's own
// when empty) and returns what it references: Wharf's one manifest parser,
// used for pushes, mirrored manifests and prefetching. Errors:
// ErrManifestInvalid.
func ParseManifest(mediaType string, body []byte) (*ManifestInfo, error) {
	p, err := parseManifest(mediaType, body)
	if err != nil {
		return nil, err
	}
	return &ManifestInfo{MediaType: p.mediaType, Blobs: p.blobs, Manifests: p.entries}, nil
}

// IsIndex reports whether mediaType is a list of manifests.
func IsIndex(mediaType string) bool {
	return mediaType == MediaTypeOCIIndex || mediaType == MediaTypeDockerList
}

// parseManifest checks a pushed manifest and extracts its references. The
// media type comes from the Content-Type header, else the document's own
// mediaType field; when both are present they must agree.
func parseManifest(contentType string, body []byte) (*parsedManifest, error) {
	if ct, _, err := mime.ParseMediaType(contentType); err == nil {
		contentType = ct
	}
	var doc manifestDoc
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, invalidManifest("not valid JSON: %v", err)
	}
	if doc.SchemaVersion != 2 {
		return nil, invalidManifest("schemaVersion must be 2")
	}
	mt := contentType
	switch {
	case mt == "" && doc.MediaType != "":
		mt = doc.MediaType
	case mt == "" && doc.Manifests != nil:
		mt = MediaTypeOCIIndex
	case mt == "":
		mt = MediaTypeOCIManifest
	case doc.MediaType != "" && doc.MediaType != mt:
		return nil, invalidManifest("mediaType %q does not match Content-Type %q", doc.MediaType, mt)
	}
	p := &parsedManifest{mediaType: mt, artifactType: doc.ArtifactType, annotations: doc.Annotations}
	switch mt {
	case MediaTypeOCIManifest, MediaTypeDockerManifest:
		if doc.Config == nil {
			return nil, invalidManifest("image manifest has no config")
		}
		if doc.Manifests != nil {
			return nil, invalidManifest("image manifest has a manifests list")
		}
		if err := checkDescriptor(*doc.Config); err != nil {
			return nil, err
		}
		p.blobs = append(p.blobs, doc.Config.Digest)
		if p.artifactType == "" {
			p.artifactType = doc.Config.MediaType
		}
		for _, l := range doc.Layers {
			if err := checkDescriptor(l); err != nil {
				return nil, err
			}
			if !nonDistributable(l.MediaType) {
				p.blobs = append(p.blobs, l.Digest)
			}
		}
	case MediaTypeOCIIndex, MediaTypeDockerList:
		if doc.Config != nil || doc.Layers != nil {
			return nil, invalidManifest("index has config or layers")
		}
		for _, m := range doc.Manifests {
			if err := checkDescriptor(m); err != nil {
				return nil, err
			}
			p.children = append(p.children, m.Digest)
			p.entries = append(p.entries, m)
		}
	default:
		return nil, invalidManifest("unsupported manifest media type %q", mt)
	}
	if doc.Subject != nil {
		if err := checkDescriptor(*doc.Subject); err != nil {
			return nil, err
		}
		p.subject = doc.Subject
	}
	return p, nil
}

func checkDescriptor(d Descriptor) error {
	if err := ValidateDigest(d.Digest); err != nil {
		return invalidManifest("descriptor digest %q: %v", d.Digest, err)
	}
	if d.Size < 0 {
		return invalidManifest("descriptor %s has a negative size", d.Digest)
	}
	return nil
}

// nonDistributable reports layers that registries must not require to be
// pushed (OCI non-distributable and Docker foreign layers).
func nonDistributable(mediaType string) bool {
	return strings.Contains(mediaType, ".nondistributable.") || strings.Contains(mediaType, ".foreign.")
}

// ValidateDigest accepts well-formed sha256 and sha512 digests only (the
// rule the blob backends name their files and objects by).
func ValidateDigest(d digest.Digest) error { return blobs.ValidDigest(d) }

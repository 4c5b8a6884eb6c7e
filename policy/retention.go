package policy

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// RetentionPolicy keeps what matters of pushed repositories that match
// Repos and lets the rest go: a tag is kept when any keep clause keeps it
// (among the KeepLast most recently pushed, matching KeepTags, pulled
// within KeepPulledWithin, or immutable); the others are untagged, and
// what only they held is collected as after a delete.
type RetentionPolicy struct {
	Repos            []string `yaml:"repos"`
	KeepLast         int      `yaml:"keep-last"`
	KeepTags         []string `yaml:"keep-tags"`
	KeepPulledWithin string   `yaml:"keep-pulled-within"` // 30d, 12h
	UntaggedAfter    string   `yaml:"untagged-after"`     // untagged manifests kept this long (at least --gc-grace)
}

// Retention is a compiled retention policy.
type Retention struct {
	KeepLast         int
	KeepPulledWithin time.Duration
	UntaggedAfter    time.Duration // 0: the GC grace
	repos, keepTags  []*regexp.Regexp
	text             string
}

// String names the policy for audit records and previews.
func (r *Retention) String() string { return r.text }

// KeepsTag reports whether keep-tags names tag.
func (r *Retention) KeepsTag(tag string) bool { return anyMatch(r.keepTags, tag) }

func compileRetention(pols []RetentionPolicy) ([]*Retention, error) {
	var out []*Retention
	for i, p := range pols {
		if len(p.Repos) == 0 {
			return nil, fmt.Errorf("retention policy %d: repos is required", i+1)
		}
		if p.KeepLast < 0 {
			return nil, fmt.Errorf("retention policy %d: keep-last %d: want 0 or more", i+1, p.KeepLast)
		}
		r := &Retention{KeepLast: p.KeepLast,
			text: fmt.Sprintf("retention policy %d (repos %s)", i+1, strings.Join(p.Repos, ", "))}
		if p.KeepPulledWithin != "" {
			d, err := ParseDays(p.KeepPulledWithin)
			if err != nil {
				return nil, fmt.Errorf("retention policy %d: keep-pulled-within: %w", i+1, err)
			}
			r.KeepPulledWithin = d
		}
		if p.UntaggedAfter != "" {
			d, err := ParseDays(p.UntaggedAfter)
			if err != nil {
				return nil, fmt.Errorf("retention policy %d: untagged-after: %w", i+1, err)
			}
			r.UntaggedAfter = d
		}
		for _, pat := range p.Repos {
			re, err := compilePattern(pat)
			if err != nil {
				return nil, fmt.Errorf("retention policy %d: %w", i+1, err)
			}
			r.repos = append(r.repos, re)
		}
		for _, pat := range p.KeepTags {
			re, err := compilePattern(pat)
			if err != nil {
				return nil, fmt.Errorf("retention policy %d: %w", i+1, err)
			}
			r.keepTags = append(r.keepTags, re)
		}
		out = append(out, r)
	}
	return out, nil
}

// RetentionFor is the first retention policy that names repo (nil: none;
// the repository is left alone).
func (p *Policy) RetentionFor(repo string) *Retention {
	for _, r := range p.retention {
		if anyMatch(r.repos, repo) {
			return r
		}
	}
	return nil
}

// UntaggedAfter is how long untagged manifests of repo are kept by its
// retention policy (0: no policy says: the GC grace).
func (p *Policy) UntaggedAfter(repo string) time.Duration {
	if r := p.RetentionFor(repo); r != nil {
		return r.UntaggedAfter
	}
	return 0
}

// HasRetention reports whether any retention policy is configured.
func (p *Policy) HasRetention() bool { return len(p.retention) > 0 }

// ParseDays reads "90d", "12h", "30m": days as well as Go durations
// (positive).
func ParseDays(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("%q: want days (90d) or a duration (12h)", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	v, err := time.ParseDuration(s)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("%q: want days (90d) or a duration (12h)", s)
	}
	return v, nil
}

package policy

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// QuotaRule bounds what the pushed repositories that match Repos hold
// together: `quotas: [{repos: ["team/**"], max: 50G}]`. A push that would
// take them over it is refused, naming the quota.
type QuotaRule struct {
	Repos []string `yaml:"repos"`
	Max   string   `yaml:"max"` // 50G, 512M, 1T (powers of 1024), or bytes
}

// Quota is a compiled quota.
type Quota struct {
	Max      int64
	repos    []*regexp.Regexp
	prefixes []string // each pattern's literal start: where its repositories' keys are
	text     string
}

// String names the quota for errors and pages.
func (q *Quota) String() string { return q.text }

// Matches reports whether the quota counts repo.
func (q *Quota) Matches(repo string) bool { return anyMatch(q.repos, repo) }

// Prefixes are the literal starts of the quota's patterns: every
// repository it counts starts with one of them.
func (q *Quota) Prefixes() []string { return q.prefixes }

func compileQuotas(rules []QuotaRule) ([]*Quota, error) {
	var out []*Quota
	for i, r := range rules {
		if len(r.Repos) == 0 || r.Max == "" {
			return nil, fmt.Errorf("quota %d: repos and max are both required", i+1)
		}
		max, err := ParseBytes(r.Max)
		if err != nil {
			return nil, fmt.Errorf("quota %d: max: %w", i+1, err)
		}
		q := &Quota{Max: max, text: fmt.Sprintf("quota %d (repos %s, max %s)", i+1, strings.Join(r.Repos, ", "), r.Max)}
		for _, pat := range r.Repos {
			re, err := compilePattern(pat)
			if err != nil {
				return nil, fmt.Errorf("quota %d: %w", i+1, err)
			}
			q.repos = append(q.repos, re)
			lit, _, _ := strings.Cut(pat, "*")
			q.prefixes = append(q.prefixes, lit)
		}
		out = append(out, q)
	}
	return out, nil
}

// QuotaFor is the first quota that counts repo (nil: none).
func (p *Policy) QuotaFor(repo string) *Quota {
	for _, q := range p.quotas {
		if q.Matches(repo) {
			return q
		}
	}
	return nil
}

// Quotas are the configured quotas, in order.
func (p *Policy) Quotas() []*Quota { return p.quotas }

// ParseBytes reads "50G", "512M", "1T", "64K" (powers of 1024) or a
// number of bytes.
func ParseBytes(s string) (int64, error) {
	s = strings.TrimSpace(strings.ToUpper(s))
	mult := int64(1)
	for i, u := range []string{"K", "M", "G", "T"} {
		if v, ok := strings.CutSuffix(strings.TrimSuffix(s, "B"), u); ok && v != "" {
			s, mult = v, int64(1)<<(10*(i+1))
			break
		}
	}
	n, err := strconv.ParseFloat(s, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q: want a size such as 50G, 512M or a number of bytes", s)
	}
	return int64(n * float64(mult)), nil
}

// FormatBytes is n in B, KiB, MiB, GiB, … (one decimal).
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

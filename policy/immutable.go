package policy

import (
	"fmt"
	"regexp"
	"strings"
)

// ImmutableRule makes tags that match Tags in repositories that match Repos
// immutable: once pushed, such a tag never moves to another manifest, and
// deleting it (or a manifest it names) needs the admin action.
type ImmutableRule struct {
	Repos []string `yaml:"repos"`
	Tags  []string `yaml:"tags"`
}

type immutable struct {
	repos, tags []*regexp.Regexp
	text        string // the rule, as errors name it
}

// compileImmutable compiles the config's immutable rules.
func compileImmutable(rules []ImmutableRule) ([]immutable, error) {
	var out []immutable
	for i, r := range rules {
		if len(r.Repos) == 0 || len(r.Tags) == 0 {
			return nil, fmt.Errorf("immutable rule %d: repos and tags are both required", i+1)
		}
		im := immutable{text: fmt.Sprintf("immutable rule %d (repos %s, tags %s)", i+1, strings.Join(r.Repos, ", "), strings.Join(r.Tags, ", "))}
		for _, pat := range r.Repos {
			re, err := compilePattern(pat)
			if err != nil {
				return nil, fmt.Errorf("immutable rule %d: %w", i+1, err)
			}
			im.repos = append(im.repos, re)
		}
		for _, pat := range r.Tags {
			re, err := compilePattern(pat) // a tag has no '/': * and ** are alike
			if err != nil {
				return nil, fmt.Errorf("immutable rule %d: %w", i+1, err)
			}
			im.tags = append(im.tags, re)
		}
		out = append(out, im)
	}
	return out, nil
}

func anyMatch(res []*regexp.Regexp, s string) bool {
	for _, re := range res {
		if re.MatchString(s) {
			return true
		}
	}
	return false
}

// ImmutableTag reports whether tag of repo is immutable, and the rule that
// makes it so (for the error a client gets).
func (p *Policy) ImmutableTag(repo, tag string) (rule string, ok bool) {
	for _, im := range p.immutable {
		if anyMatch(im.repos, repo) && anyMatch(im.tags, tag) {
			return im.text, true
		}
	}
	return "", false
}

// HasImmutable reports whether any immutable rule is configured.
func (p *Policy) HasImmutable() bool { return len(p.immutable) > 0 }

// ImmutableDeleteRefused says why s may not delete what would remove tags
// of repo (a tag, or a manifest those tags name): one of them is immutable
// and s lacks the admin action there. "" when the delete may go on.
func (p *Policy) ImmutableDeleteRefused(s Subject, repo string, tags []string) string {
	for _, t := range tags {
		if rule, ok := p.ImmutableTag(repo, t); ok && !p.Allowed(s, repo, Admin, false) {
			return fmt.Sprintf("tag %s of %s is immutable (%s): deleting it, or the manifest it names, needs the admin action", t, repo, rule)
		}
	}
	return ""
}

package policy

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Action is what a request does to a repository.
type Action string

// The actions rules grant.
const (
	Pull   Action = "pull"
	Push   Action = "push"
	Delete Action = "delete"
	// Admin is the admin API's (/api/v1/): on repositories, deleting and
	// evicting like Delete; with repos ["**"], what concerns the whole
	// registry too (usage, garbage collection, upstreams).
	Admin Action = "admin"
)

// Subject is who asks: a user name, or "" for anonymous.
type Subject struct {
	User   string
	Groups []string // groups the company directory put User in, besides the config's
	Scope  *Scope   // nil: all the rules grant User; else only what it also allows (an access token)
}

// Rule grants Actions on repositories matching Repos to the subjects in
// Who. Patterns: "team/app" exactly, "team/*" one path component,
// "team/**" anything below (mirrored copies are named after their
// registry: "docker.io/library/*"). Who: user names, "group:NAME",
// "anonymous", "users" (anyone signed in) and "everyone".
type Rule struct {
	Repos   []string `yaml:"repos"`
	Who     []string `yaml:"who"`
	Actions []Action `yaml:"actions"`
}

// Config is the access part of the config file.
type Config struct {
	Rules  []Rule              `yaml:"rules"`
	Groups map[string][]string `yaml:"groups"`
	// AnonymousMirrorPull lets anonymous clients pull mirrored content once
	// users exist (default true: it is how dockerd uses a mirror).
	AnonymousMirrorPull *bool `yaml:"anonymous-mirror-pull"`
	// Immutable tags never move once pushed (immutable.go).
	Immutable []ImmutableRule `yaml:"immutable"`
	// RetentionPolicies clean up pushed repositories (retention.go).
	RetentionPolicies []RetentionPolicy `yaml:"retention-policies"`
	// Pin keeps mirrored images from eviction (pins.go).
	Pin []string `yaml:"pin"`
	// Quotas bound what pushed namespaces hold (quotas.go).
	Quotas []QuotaRule `yaml:"quotas"`
}

// Policy decides who may do what. It is immutable and safe for concurrent
// use.
type Policy struct {
	open       bool
	anonMirror bool
	rules      []compiled
	groupsOf   map[string][]string // user → groups
	cfg        []Rule              // the rules as configured, for display
	immutable  []immutable
	retention  []*Retention
	pins       []pin
	quotas     []*Quota
}

type compiled struct {
	repos   []*regexp.Regexp
	who     []string
	actions []Action
	all     bool // one of repos is "**": every name
}

// New compiles cfg. With no users (users == 0) everything is allowed, as
// registry:2 on a LAN; rules still decide where they must (pushes over
// mirrored names).
func New(users int, cfg Config) (*Policy, error) {
	p := &Policy{open: users == 0, anonMirror: true, groupsOf: map[string][]string{}}
	if cfg.AnonymousMirrorPull != nil {
		p.anonMirror = *cfg.AnonymousMirrorPull
	}
	for g, members := range cfg.Groups {
		for _, m := range members {
			p.groupsOf[m] = append(p.groupsOf[m], g)
		}
	}
	for i, r := range cfg.Rules {
		c := compiled{who: r.Who, actions: r.Actions}
		if len(r.Repos) == 0 || len(r.Who) == 0 || len(r.Actions) == 0 {
			return nil, fmt.Errorf("rule %d: repos, who and actions are all required", i+1)
		}
		for _, a := range r.Actions {
			if a != Pull && a != Push && a != Delete && a != Admin {
				return nil, fmt.Errorf("rule %d: unknown action %q (pull, push, delete, admin)", i+1, a)
			}
		}
		for _, pat := range r.Repos {
			c.all = c.all || pat == "**"
			re, err := compilePattern(pat)
			if err != nil {
				return nil, fmt.Errorf("rule %d: %w", i+1, err)
			}
			c.repos = append(c.repos, re)
		}
		p.rules = append(p.rules, c)
		p.cfg = append(p.cfg, Rule{Repos: slices.Clone(r.Repos), Who: slices.Clone(r.Who), Actions: slices.Clone(r.Actions)})
	}
	var err error
	if p.immutable, err = compileImmutable(cfg.Immutable); err != nil {
		return nil, err
	}
	if p.retention, err = compileRetention(cfg.RetentionPolicies); err != nil {
		return nil, err
	}
	if p.pins, err = compilePins(cfg.Pin); err != nil {
		return nil, err
	}
	if p.quotas, err = compileQuotas(cfg.Quotas); err != nil {
		return nil, err
	}
	return p, nil
}

func compilePattern(pat string) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(pat); i++ {
		switch {
		case strings.HasPrefix(pat[i:], "**"):
			b.WriteString(".*")
			i++
		case pat[i] == '*':
			b.WriteString("[^/]*")
		default:
			b.WriteString(regexp.QuoteMeta(pat[i : i+1]))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

// Rules returns the rules as configured, in order (the first that names a
// repository and a subject decides).
func (p *Policy) Rules() []Rule { return slices.Clone(p.cfg) }

// GroupsOf returns the groups user belongs to, sorted.
func (p *Policy) GroupsOf(user string) []string {
	g := slices.Clone(p.groupsOf[user])
	slices.Sort(g)
	return g
}

// AnonymousMirrorPull reports whether anonymous clients may pull mirrored
// content.
func (p *Policy) AnonymousMirrorPull() bool { return p.anonMirror }

// Open reports that no users are configured: everything is allowed.
func (p *Policy) Open() bool { return p.open }

// match returns the first rule naming repo and s.
func (p *Policy) match(s Subject, repo string) *compiled {
	for i := range p.rules {
		r := &p.rules[i]
		if slices.ContainsFunc(r.repos, func(re *regexp.Regexp) bool { return re.MatchString(repo) }) &&
			slices.ContainsFunc(r.who, func(w string) bool { return p.names(w, s) }) {
			return r
		}
	}
	return nil
}

func (p *Policy) names(who string, s Subject) bool {
	switch {
	case who == "everyone":
		return true
	case who == "anonymous":
		return s.User == ""
	case who == "users":
		return s.User != ""
	case strings.HasPrefix(who, "group:"):
		g := strings.TrimPrefix(who, "group:")
		return s.User != "" && (slices.Contains(p.groupsOf[s.User], g) || slices.Contains(s.Groups, g))
	}
	return s.User != "" && who == s.User
}

// Allowed decides whether s may do a on repo; mirrored says repo is a
// mirrored copy (named after its registry). The first rule naming repo and
// s decides; without one, only pulls of mirrored content are allowed
// (anonymous ones if AnonymousMirrorPull), or everything while no users
// exist.
func (p *Policy) Allowed(s Subject, repo string, a Action, mirrored bool) bool {
	if s.Scope != nil && !s.Scope.Allows(repo, a) {
		return false
	}
	if r := p.match(s, repo); r != nil {
		return slices.Contains(r.actions, a)
	}
	if p.open {
		return true
	}
	return a == Pull && mirrored && (s.User != "" || p.anonMirror)
}

// RegistryAdmin reports whether s may use the admin API on the registry
// as a whole: a rule whose repositories include every name ("**") grants
// it admin, or no users exist.
func (p *Policy) RegistryAdmin(s Subject) bool {
	if s.Scope != nil && !s.Scope.everything(Admin) {
		return false
	}
	for i := range p.rules {
		r := &p.rules[i]
		if r.all && slices.ContainsFunc(r.who, func(w string) bool { return p.names(w, s) }) {
			return slices.Contains(r.actions, Admin)
		}
	}
	return p.open
}

// Explicit reports whether a rule names repo and s and grants a: what it
// takes to push over a name that is mirrored.
func (p *Policy) Explicit(s Subject, repo string, a Action) bool {
	if s.Scope != nil && !s.Scope.Allows(repo, a) {
		return false
	}
	r := p.match(s, repo)
	return r != nil && slices.Contains(r.actions, a)
}

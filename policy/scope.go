package policy

import (
	"fmt"
	"regexp"
	"slices"
)

// Scope narrows a subject to some repositories and actions: an access
// token's. Whatever the rules grant the subject, it may do only what its
// scope also allows, so a token never exceeds its creator's rights at the
// time of use.
type Scope struct {
	Repos   []string // patterns, as the rules' ("team/**")
	Actions []Action
	repos   []*regexp.Regexp
}

// NewScope checks and compiles a scope.
func NewScope(repos []string, actions []Action) (*Scope, error) {
	if len(repos) == 0 || len(actions) == 0 {
		return nil, fmt.Errorf("a scope names repositories and actions")
	}
	s := &Scope{Repos: slices.Clone(repos), Actions: slices.Clone(actions)}
	for _, a := range actions {
		if a != Pull && a != Push && a != Delete && a != Admin {
			return nil, fmt.Errorf("action %q: want pull, push, delete or admin", a)
		}
	}
	for _, r := range repos {
		re, err := compilePattern(r)
		if err != nil || r == "" {
			return nil, fmt.Errorf("repository pattern %q: %v", r, err)
		}
		s.repos = append(s.repos, re)
	}
	return s, nil
}

// Allows reports whether the scope covers action a on repo.
func (s *Scope) Allows(repo string, a Action) bool {
	if !slices.Contains(s.Actions, a) {
		return false
	}
	return slices.ContainsFunc(s.repos, func(re *regexp.Regexp) bool { return re.MatchString(repo) })
}

// everything reports whether the scope covers a on every repository ("**").
func (s *Scope) everything(a Action) bool {
	return slices.Contains(s.Actions, a) && slices.Contains(s.Repos, "**")
}

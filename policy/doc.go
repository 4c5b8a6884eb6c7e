// Package policy decides where names go and, later, who may do what. For
// now it owns the mapping of request names to upstream registries and to
// the local repository names mirrored content is cached under.
package policy

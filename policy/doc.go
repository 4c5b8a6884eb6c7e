// Package policy decides who may do what and where names go:
//
//   - users (htpasswd, bcrypt only) and ordered access rules over
//     repository patterns, users, groups, anonymous callers and actions
//     (pull, push, delete), first match deciding; anonymous-mirror-pull lets
//     anonymous callers read content whose recorded origin is an upstream
//     registry, never pushed content;
//   - Mirror, the one mapping of a request name and its ?ns= to the
//     upstream registry, the repository there, and the local repository the
//     mirrored copy is stored under.
//
// Whether a repository holds pushed or mirrored content is not decided
// here: the store records it when content is written (cache.Origin) and the
// HTTP layer reads it back.
package policy

package oci

import "strings"

// The distribution reference grammar for repository paths and tags:
//
//	name: component ("/" component)*, component: [a-z0-9]+ (([._]|__|-+) [a-z0-9]+)*
//	tag:  [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
//
// checked by hand (every request checks its name: a regexp was a tenth of
// a warm manifest GET); names_test.go holds the regexps as the oracle.
const MaxNameLength = 255

// ValidName reports whether name is a repository name.
func ValidName(name string) bool {
	if len(name) == 0 || len(name) > MaxNameLength {
		return false
	}
	for {
		c, rest, more := strings.Cut(name, "/")
		if !validComponent(c) {
			return false
		}
		if !more {
			return true
		}
		name = rest
	}
}

func isLowerAlnum(b byte) bool { return b >= 'a' && b <= 'z' || b >= '0' && b <= '9' }

func validComponent(c string) bool {
	i := 0
	for {
		// [a-z0-9]+
		start := i
		for i < len(c) && isLowerAlnum(c[i]) {
			i++
		}
		if i == start {
			return false
		}
		if i == len(c) {
			return true
		}
		// a separator: ".", "_", "__" or "-"+
		switch c[i] {
		case '.':
			i++
		case '_':
			i++
			if i < len(c) && c[i] == '_' {
				i++
			}
		case '-':
			for i < len(c) && c[i] == '-' {
				i++
			}
		default:
			return false
		}
	}
}

// ValidTag reports whether tag is a tag.
func ValidTag(tag string) bool {
	if len(tag) == 0 || len(tag) > 128 {
		return false
	}
	for i := 0; i < len(tag); i++ {
		b := tag[i]
		switch {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9', b == '_':
		case (b == '.' || b == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// CheckName is NAME_INVALID for a name that is not one.
func CheckName(name string) error {
	if !ValidName(name) {
		return Errorf(CodeNameInvalid, "invalid repository name %q", name)
	}
	return nil
}

// CheckTag is TAG_INVALID for a tag that is not one.
func CheckTag(tag string) error {
	if !ValidTag(tag) {
		return Errorf(CodeTagInvalid, "invalid tag %q", tag)
	}
	return nil
}

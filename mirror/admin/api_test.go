package admin

import (
	"fmt"
	"testing"
)

func TestSplitAPIRepo(t *testing.T) {
	for in, want := range map[string][3]string{
		"team/app":                      {"team/app", "", "true"},
		"team/tagsx":                    {"team/tagsx", "", "true"},
		"team/app/tags":                 {"team/app", "tags", "true"},
		"team/app/tags/v1":              {"team/app", "tags/v1", "true"},
		"docker.io/library/alpine":      {"docker.io/library/alpine", "", "true"},
		"team/app/manifests/sha256:abc": {"team/app", "manifests/sha256:abc", "true"},
		"team/manifests":                {"team/manifests", "", "true"},
		"Team/App/tags":                 {"Team/App", "tags", "false"},
		"tags":                          {"tags", "", "true"},
	} {
		name, what, ok := splitAPIRepo(in)
		if name != want[0] || what != want[1] || fmt.Sprint(ok) != want[2] {
			t.Errorf("splitAPIRepo(%q) = %q %q %v, want %v", in, name, what, ok, want)
		}
	}
}

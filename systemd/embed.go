// Package systemd holds Wharf's systemd units, embedded so that `wharf
// install` and the .deb lay out exactly the files CI verifies.
package systemd

import _ "embed"

// Service is wharf.service; Sysusers is the sysusers.d entry for its user.
var (
	//go:embed wharf.service
	Service []byte
	//go:embed wharf.sysusers
	Sysusers []byte
)

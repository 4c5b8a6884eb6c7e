//go:build !linux

package cache

// lowerThreadPriority does nothing where threads have no nice value of
// their own.
func lowerThreadPriority() {}

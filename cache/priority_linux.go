package cache

import "syscall"

// backgroundNice is the nice value of a background download's thread: the
// lowest priority, which still gets a share when the machine is busy.
const backgroundNice = 19

// lowerThreadPriority sets the calling thread's nice value to
// backgroundNice. It can fail (a seccomp filter, e.g. systemd's
// SystemCallFilter without setpriority): the thread then keeps its
// priority, which is only slower for the clients.
func lowerThreadPriority() {
	syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), backgroundNice)
}

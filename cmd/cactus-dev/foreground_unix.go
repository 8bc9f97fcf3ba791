//go:build unix

package main

import (
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// takeForeground makes the runner the terminal's foreground process group,
// as a shell does for a job, so that Ctrl-C reaches the runner alone. Under
// `make run` the terminal would otherwise send the SIGINT to make as well,
// and make reports any interrupt as a failed recipe (exit 130) although
// the runner stopped cleanly. The returned function gives the terminal
// back. Without a terminal, or when not in the foreground, it does nothing.
func takeForeground() (restore func()) {
	noop := func() {}
	fd := int(os.Stdin.Fd())
	orig, err := unix.IoctlGetInt(fd, unix.TIOCGPGRP)
	if err != nil || orig != unix.Getpgrp() {
		return noop
	}
	if err := unix.Setpgid(0, 0); err != nil {
		return noop
	}
	// A process outside the foreground may take the terminal only while
	// it ignores SIGTTOU.
	signal.Ignore(syscall.SIGTTOU)
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPGRP, unix.Getpgrp()); err != nil {
		_ = unix.Setpgid(0, orig)
		signal.Reset(syscall.SIGTTOU)
		return noop
	}
	return func() {
		_ = unix.IoctlSetPointerInt(fd, unix.TIOCSPGRP, orig)
		signal.Reset(syscall.SIGTTOU)
	}
}

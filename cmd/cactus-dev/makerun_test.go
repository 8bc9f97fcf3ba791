//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal pair: what a terminal emulator gives a
// shell.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestMakeRunCtrlC runs `make run` on a terminal as a person does and
// presses Ctrl-C: the terminal sends SIGINT to its foreground process
// group, the runner stops cleanly, and make exits 0.
func TestMakeRunCtrlC(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the whole system")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	master, slave := openPTY(t)
	tmp := t.TempDir()
	cmd := exec.Command("make", "-s", "run", "DEVBIN="+filepath.Join(tmp, "cactus-dev"))
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = append(os.Environ(),
		"CACTUS_DEV_DATA="+filepath.Join(tmp, "data"), "CACTUS_DEV_NATS_PORT=0", "CACTUS_DEV_LISTEN=127.0.0.1:0",
		"CACTUS_DEV_ADMIN_PORT=0", "CACTUS_DEV_HS_ADDR=127.0.0.1:0", "CACTUS_LOG_LEVEL=warn", "NO_COLOR=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	// A session of its own with the terminal as its controlling terminal,
	// make its foreground job: as started from an interactive shell.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out := &lockedBuffer{}
	go func() { _, _ = bytesCopy(out, master) }()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})

	deadline := time.After(10 * time.Minute) // the build may be cold
	for !strings.Contains(out.String(), "Cactus Comments is running") {
		select {
		case err := <-done:
			t.Fatalf("make run ended before the system was up: %v\n%s", err, out.String())
		case <-deadline:
			t.Fatalf("the system did not come up:\n%s", out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if _, err := master.Write([]byte{0x03}); err != nil { // Ctrl-C
		t.Fatal(err)
	}
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) || err != nil {
			t.Fatalf("make run after Ctrl-C: %v (want exit 0)\n%s", err, out.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("make run did not stop after Ctrl-C:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "stopped cleanly") {
		t.Errorf("the runner did not stop cleanly:\n%s", out.String())
	}
}

// bytesCopy copies until the terminal closes (EIO when the last process
// holding it exits).
func bytesCopy(dst *lockedBuffer, src *os.File) (int64, error) {
	buf := make([]byte, 4096)
	var n int64
	for {
		k, err := src.Read(buf)
		if k > 0 {
			_, _ = dst.Write(buf[:k])
			n += int64(k)
		}
		if err != nil {
			return n, err
		}
	}
}

package embednats

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
)

// The range StablePort picks from: above the well-known services that
// development machines run, below the kernel's ephemeral range (32768
// and up on Linux).
const StablePortLow, StablePortHigh = 20000, 32000

// StablePort returns a TCP port of host that is free now, for a server
// that binds it a moment later. A port the kernel hands out for :0 comes
// from the ephemeral range, where it may meanwhile become the local port
// of any outgoing connection or of another server's :0 on the machine,
// and the later bind would fail; this one does not.
func StablePort(host string) (int, error) {
	var lastErr error
	for range 100 {
		port := StablePortLow + rand.IntN(StablePortHigh-StablePortLow)
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if lastErr = err; err == nil {
			return port, ln.Close()
		}
	}
	return 0, fmt.Errorf("no free port on %s between %d and %d: %w", host, StablePortLow, StablePortHigh, lastErr)
}

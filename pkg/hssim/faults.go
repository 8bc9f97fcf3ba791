package hssim

import (
	"net/http"
	"time"
)

// Fault makes matching client-server requests fail.
type Fault struct {
	// Endpoint is an endpoint name (see the EP constants) or "*" for all.
	Endpoint string
	// Room, if set, limits the fault to requests about this room (its id
	// in the path), e.g. one site's rooms rate-limited while others are
	// not.
	Room string
	// Times is how many requests fail; 0 means every one until ClearFaults.
	Times int
	// Status is the HTTP status to answer (default 500). 429 answers
	// M_LIMIT_EXCEEDED with retry_after_ms from RetryAfter, and the
	// Retry-After header except in Dendrite mode.
	Status     int
	ErrCode    string // default M_UNKNOWN (M_LIMIT_EXCEEDED for 429)
	RetryAfter time.Duration
	// Drop closes the connection without an answer.
	Drop bool
	// Probability in (0,1] fails only that share of matching requests;
	// 0 means always.
	Probability float64
}

type faultState struct {
	f    Fault
	used int
}

// InjectFault adds a fault; faults are checked in the order added.
func (s *Server) InjectFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &faultState{f: f})
}

// ClearFaults removes every fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// SetLatency delays every request to endpoint by d (0 removes it).
func (s *Server) SetLatency(endpoint string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d <= 0 {
		delete(s.latency, endpoint)
		return
	}
	s.latency[endpoint] = d
}

// Calls is how many requests reached endpoint (faulted ones included).
// Besides the client-server endpoint names it counts the simulator's own
// calls to appservices: "as.transactions", "as.users" and
// "as.thirdparty.location"/"as.thirdparty.user".
func (s *Server) Calls(endpoint string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[endpoint]
}

// ResetCalls zeroes every counter.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = map[string]int{}
}

func (s *Server) takeFaultLocked(endpoint, room string) *Fault {
	for i, fs := range s.faults {
		if fs.f.Endpoint != endpoint && fs.f.Endpoint != "*" {
			continue
		}
		if fs.f.Room != "" && fs.f.Room != room {
			continue
		}
		if fs.f.Probability > 0 && s.rng.Float64() >= fs.f.Probability {
			continue
		}
		fs.used++
		f := fs.f
		if f.Times > 0 && fs.used >= f.Times {
			s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
		}
		return &f
	}
	return nil
}

func (s *Server) applyFault(w http.ResponseWriter, f *Fault) {
	if f.Drop {
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				_ = conn.Close()
				return
			}
		}
		panic(http.ErrAbortHandler) // closes the connection without an answer
	}
	status := f.Status
	if status == 0 {
		status = http.StatusInternalServerError
	}
	if status == http.StatusTooManyRequests {
		writeError(w, s.errLimit(f.RetryAfter))
		return
	}
	code := f.ErrCode
	if code == "" {
		code = "M_UNKNOWN"
	}
	writeError(w, errf(status, code, "injected fault"))
}

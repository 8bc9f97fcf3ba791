package bus

import "time"

// Status is what a worker replica last reported about itself in
// BucketStatus (key StatusKey), for operators: cactusctl doctor reads it.
type Status struct {
	Service  string    `json:"service"`
	Instance string    `json:"instance"`
	At       time.Time `json:"at"`
	// HomeserverUnreachableSince is set while the replica's homeserver
	// calls get no answer; HomeserverLastStatus is the HTTP status of the
	// last attempt (0: no response).
	HomeserverUnreachableSince *time.Time `json:"homeserver_unreachable_since,omitempty"`
	HomeserverLastStatus       int        `json:"homeserver_last_status,omitempty"`
	// WaitingRetry is how many messages the replica holds waiting for
	// their next attempt after a transient failure.
	WaitingRetry int `json:"waiting_retry"`
}

// StatusKey is the key of a replica's report.
func StatusKey(service, instance string) string { return Token(service) + "." + Token(instance) }

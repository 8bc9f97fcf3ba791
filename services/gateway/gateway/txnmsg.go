package gateway

import (
	"crypto/sha256"
	"encoding/hex"
)

// A transaction message is {"events":[e1,e2,...]}: events exactly as the
// homeserver sent them, in its order, and nothing else of the transaction
// (what the services do not read is not stored). A transaction whose
// events do not fit in one message is cut into several, in order.

var (
	chunkOpen  = []byte(`{"events":[`)
	chunkClose = []byte(`]}`)
)

// chunkFraming is what a transaction message adds to the one event it
// holds: an event of at most maxChunk - chunkFraming bytes always fits.
var chunkFraming = len(chunkOpen) + len(chunkClose)

// appendChunks appends the transaction messages holding raws, in order,
// each of at most max bytes, to buf, the end offset in buf of each to
// ends, and the offset in buf of each raw to starts. Every raw must fit
// alone (len(raw) <= max - chunkFraming). No raw gives no message.
func appendChunks(buf []byte, ends, starts []int, raws [][]byte, max int) ([]byte, []int, []int) {
	start := -1 // of the open message, -1 if none
	for _, raw := range raws {
		if start >= 0 && len(buf)-start+1+len(raw)+len(chunkClose) > max {
			buf = append(buf, chunkClose...)
			ends = append(ends, len(buf))
			start = -1
		}
		if start < 0 {
			start = len(buf)
			buf = append(buf, chunkOpen...)
		} else {
			buf = append(buf, ',')
		}
		starts = append(starts, len(buf))
		buf = append(buf, raw...)
	}
	if start >= 0 {
		buf = append(buf, chunkClose...)
		ends = append(ends, len(buf))
	}
	return buf, ends, starts
}

// chunkID is a transaction message's Nats-Msg-Id: a hash of its bytes, so
// that the identical retry of a transaction stores nothing twice. Not the
// transaction id: Dendrite merges new events into a retried transaction
// id, and those must be stored.
func chunkID(chunk []byte) string {
	sum := sha256.Sum256(chunk)
	return "txn:" + hex.EncodeToString(sum[:])
}

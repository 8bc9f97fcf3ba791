// Package cas is the one compare-and-set of the service over JetStream
// key-value buckets: read a key, change its value, write it back only if
// nobody wrote it in between, and start over if somebody did. Every bucket
// that replicas update concurrently (sites, bot state, done markers) goes
// through it, so the two things that are easy to get wrong are right in
// one place:
//
//   - What a lost compare-and-set looks like. JetStream reports it as
//     error 10071 (wrong last sequence) on a single-replica bucket and as
//     10164 on a replicated one; nats.go wraps them as ErrKeyExists (a
//     create) or ErrKeyRevisionMismatch (an update), depending on version
//     and call. IsConflict knows all four forms.
//
//   - Where reads come from. A bucket is a stream with AllowDirect set, and
//     nats.go's KeyValue.Get then uses the direct get API, which every
//     replica of the stream answers once it is about 90% caught up with
//     the leader (nats-server enables direct gets on a follower at that
//     point). On an R3 bucket a read right after a write can therefore
//     return the previous value. That costs nothing but a retry inside a
//     compare-and-set loop, yet a fan-out job that reads the site
//     snapshot a moderation event has just written, or a done-marker
//     check after another replica wrote the marker, must see the write.
//     Get here asks the stream leader ($JS.API.STREAM.MSG.GET), which has
//     every acknowledged write. Reads that may lag (the room index) keep
//     using the bucket's own Get through KV(). A bucket with a single
//     replica has no follower: there Get is the direct get, which costs a
//     third of a leader get through the JetStream API.
//
// Turning AllowDirect off in the bucket configuration would also do, but
// nats.go sets it on every CreateOrUpdateKeyValue and each handle decides
// direct or not when it binds, so a restart of any service would flip it
// back for some replicas. A leader get does not depend on configuration.
// Replicated buckets are recognised when the bucket is opened: a service
// started before a change of CACTUS_NATS_REPLICAS keeps its view until it
// restarts (every service restarts to take the new setting).
package cas

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrNotFound means the key does not exist (never written, deleted,
// purged, or expired).
var ErrNotFound = jetstream.ErrKeyNotFound

// maxAttempts bounds a compare-and-set loop. Writers of one key are the
// replicas' lanes; far fewer than this ever collide on one key.
const maxAttempts = 100

// IsConflict reports a lost compare-and-set: the key was written (or
// created) by someone else since it was read.
func IsConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// Bucket is a key-value bucket with leader reads and compare-and-set.
type Bucket struct {
	kv         jetstream.KeyValue
	nc         *nats.Conn
	name       string
	stream     string
	replicated bool // more than one replica: reads go to the leader
}

// Entry is a key's current value and revision.
type Entry struct {
	Value    []byte
	Revision uint64
	Created  time.Time
}

// Open binds to an existing bucket.
func Open(ctx context.Context, js jetstream.JetStream, bucket string) (*Bucket, error) {
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", bucket, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", bucket, err)
	}
	replicas := 1
	if s, ok := st.(*jetstream.KeyValueBucketStatus); ok {
		replicas = s.StreamInfo().Config.Replicas
	}
	return &Bucket{kv: kv, nc: js.Conn(), name: bucket, stream: "KV_" + bucket, replicated: replicas > 1}, nil
}

// KV is the bucket's own handle, for reads that may lag, watches and
// unconditional writes.
func (b *Bucket) KV() jetstream.KeyValue { return b.kv }

// Name is the bucket's name.
func (b *Bucket) Name() string { return b.name }

// msgGetResponse is JetStream's answer to $JS.API.STREAM.MSG.GET.
type msgGetResponse struct {
	Error   *jetstream.APIError `json:"error,omitempty"`
	Message *struct {
		Subject  string    `json:"subject"`
		Sequence uint64    `json:"seq"`
		Header   []byte    `json:"hdrs,omitempty"`
		Data     []byte    `json:"data,omitempty"`
		Time     time.Time `json:"time"`
	} `json:"message,omitempty"`
}

// Get reads key from the stream leader: the last acknowledged write,
// whichever replica made it.
func (b *Bucket) Get(ctx context.Context, key string) (Entry, error) {
	if !b.replicated {
		e, err := b.kv.Get(ctx, key)
		if err != nil {
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				return Entry{}, ErrNotFound
			}
			return Entry{}, fmt.Errorf("bucket %s: get %s: %w", b.name, key, err)
		}
		return Entry{Value: e.Value(), Revision: e.Revision(), Created: e.Created()}, nil
	}
	return b.leaderGet(ctx, key)
}

func (b *Bucket) leaderGet(ctx context.Context, key string) (Entry, error) {
	req, err := json.Marshal(map[string]string{"last_by_subj": "$KV." + b.name + "." + key})
	if err != nil {
		return Entry{}, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	msg, err := b.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+b.stream, req)
	if err != nil {
		return Entry{}, fmt.Errorf("bucket %s: get %s: %w", b.name, key, err)
	}
	var resp msgGetResponse
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return Entry{}, fmt.Errorf("bucket %s: get %s: unreadable answer: %w", b.name, key, err)
	}
	if resp.Error != nil {
		if resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			return Entry{}, ErrNotFound
		}
		return Entry{}, fmt.Errorf("bucket %s: get %s: %w", b.name, key, resp.Error)
	}
	if resp.Message == nil {
		return Entry{}, fmt.Errorf("bucket %s: get %s: empty answer", b.name, key)
	}
	if len(resp.Message.Header) > 0 {
		h, err := nats.DecodeHeadersMsg(resp.Message.Header)
		if err != nil {
			return Entry{}, fmt.Errorf("bucket %s: get %s: headers: %w", b.name, key, err)
		}
		// A delete or purge leaves a marker as the key's last message, as
		// does a key removed by its TTL.
		if h.Get("KV-Operation") != "" || h.Get(jetstream.MarkerReasonHeader) != "" {
			return Entry{}, ErrNotFound
		}
	}
	return Entry{Value: resp.Message.Data, Revision: resp.Message.Sequence, Created: resp.Message.Time}, nil
}

// Update applies fn to key's current value and writes the result with a
// compare-and-set on the revision read, creating the key if it does not
// exist; on a conflict it reads again and calls fn again. cur is nil when
// the key does not exist. fn returning changed=false (or an error) writes
// nothing; Update then returns the revision read (0 if absent).
func (b *Bucket) Update(ctx context.Context, key string, fn func(cur []byte) (next []byte, changed bool, err error)) (uint64, error) {
	for attempt := 1; ; attempt++ {
		e, err := b.Get(ctx, key)
		exists := err == nil
		if err != nil && !errors.Is(err, ErrNotFound) {
			return 0, err
		}
		var cur []byte
		if exists {
			cur = e.Value
		}
		next, changed, err := fn(cur)
		if err != nil || !changed {
			return e.Revision, err
		}
		var rev uint64
		if exists {
			rev, err = b.kv.Update(ctx, key, next, e.Revision)
		} else {
			rev, err = b.kv.Create(ctx, key, next)
		}
		if err == nil {
			return rev, nil
		}
		if !IsConflict(err) {
			return 0, fmt.Errorf("bucket %s: write %s: %w", b.name, key, err)
		}
		if attempt >= maxAttempts {
			return 0, fmt.Errorf("bucket %s: write %s: still conflicting after %d attempts: %w", b.name, key, attempt, err)
		}
		// Writers that collided would collide again in lockstep.
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("bucket %s: write %s: %w", b.name, key, ctx.Err())
		case <-time.After(rand.N(time.Duration(min(attempt, 20)) * time.Millisecond)):
		}
	}
}

// Create writes key only if it does not exist. created is false, with no
// error, when it exists already.
func (b *Bucket) Create(ctx context.Context, key string, value []byte) (created bool, err error) {
	_, err = b.kv.Create(ctx, key, value)
	switch {
	case err == nil:
		return true, nil
	case IsConflict(err):
		return false, nil
	}
	return false, fmt.Errorf("bucket %s: create %s: %w", b.name, key, err)
}

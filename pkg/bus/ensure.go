package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Every replica of every service ensures the topology when it starts, so
// several usually do it at once. Ensure therefore changes only what
// differs from the declaration, and retries what concurrent creators make
// fail for a moment:
//
//   - A stream, consumer or bucket whose configuration already says what
//     the topology declares is left alone. Updating a stream while another
//     client creates a consumer on it is a data race inside nats-server
//     (2.15: fileStore.UpdateConfig against fileStore.ConsumerStore), and
//     an update that changes nothing is all a second replica would do.
//   - Two replicas creating the same stream or consumer at once: one
//     wins, the other may be told the name is in use, or that what it
//     wanted to update is not there yet. It reads again and starts over.

// ensureAttempts bounds the read-compare-write loop of one item.
const ensureAttempts = 10

// ensureItem reads an item's current configuration (found false if it
// does not exist), and creates or updates it when it is missing or
// differs.
func ensureItem(ctx context.Context, what string, read func() (found, same bool, err error), create, update func() error) error {
	for attempt := 1; ; attempt++ {
		found, same, err := read()
		switch {
		case err != nil:
		case same:
			return nil
		case found:
			err = update()
		default:
			err = create()
		}
		if err == nil {
			return nil
		}
		if !concurrentEnsureError(err) || attempt >= ensureAttempts {
			return fmt.Errorf("ensure %s: %w", what, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ensure %s: %w", what, ctx.Err())
		case <-time.After(time.Duration(attempt) * 20 * time.Millisecond):
		}
	}
}

// concurrentEnsureError reports the errors another replica ensuring the
// same item at the same moment causes.
func concurrentEnsureError(err error) bool {
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, jetstream.ErrConsumerExists) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
		errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrBucketNotFound) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamNameInUse ||
		apiErr.ErrorCode == jetstream.JSErrCodeConsumerAlreadyExists ||
		apiErr.ErrorCode == jetstream.JSErrCodeConsumerExists ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamNotFound ||
		apiErr.ErrorCode == jetstream.JSErrCodeConsumerNotFound)
}

func ensureStream(ctx context.Context, js jetstream.JetStream, sc jetstream.StreamConfig) error {
	return ensureItem(ctx, "stream "+sc.Name,
		func() (bool, bool, error) {
			s, err := js.Stream(ctx, sc.Name)
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				return false, false, nil
			}
			if err != nil {
				return false, false, err
			}
			same, err := declared(sc, s.CachedInfo().Config)
			return true, same, err
		},
		func() error { _, err := js.CreateStream(ctx, sc); return err },
		func() error { _, err := js.UpdateStream(ctx, sc); return err })
}

func ensureConsumer(ctx context.Context, js jetstream.JetStream, cs ConsumerSpec) error {
	return ensureItem(ctx, "consumer "+cs.Config.Durable,
		func() (bool, bool, error) {
			c, err := js.Consumer(ctx, cs.Stream, cs.Config.Durable)
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				return false, false, nil
			}
			if err != nil {
				return false, false, err
			}
			same, err := declared(cs.Config, c.CachedInfo().Config)
			return true, same, err
		},
		func() error { _, err := js.CreateConsumer(ctx, cs.Stream, cs.Config); return err },
		func() error { _, err := js.UpdateConsumer(ctx, cs.Stream, cs.Config); return err })
}

func ensureBucket(ctx context.Context, js jetstream.JetStream, kc jetstream.KeyValueConfig) error {
	// nats.go derives the bucket's stream from kc; the fields it derives
	// from what the topology declares are compared.
	upsert := func() error { _, err := js.CreateOrUpdateKeyValue(ctx, kc); return err }
	return ensureItem(ctx, "bucket "+kc.Bucket,
		func() (bool, bool, error) {
			kv, err := js.KeyValue(ctx, kc.Bucket)
			if errors.Is(err, jetstream.ErrBucketNotFound) {
				return false, false, nil
			}
			if err != nil {
				return false, false, err
			}
			st, err := kv.Status(ctx)
			if err != nil {
				return false, false, err
			}
			s, ok := st.(*jetstream.KeyValueBucketStatus)
			if !ok {
				return true, false, nil
			}
			c := s.StreamInfo().Config
			return true, c.Description == kc.Description && c.MaxMsgsPerSubject == int64(max(kc.History, 1)) &&
				c.MaxAge == kc.TTL && c.Replicas == max(kc.Replicas, 1) && c.Storage == kc.Storage &&
				c.SubjectDeleteMarkerTTL == kc.LimitMarkerTTL && c.AllowMsgTTL == (kc.LimitMarkerTTL != 0), nil
		}, upsert, upsert)
}

// declared reports whether the server's configuration cur is what want
// (a stream or consumer configuration) declares. The server fills in what
// want leaves out: a field want leaves at its zero value matches the
// server's zero, absence, or -1 (unlimited), and what the server always
// adds (serverFilled, its own metadata keys) is not compared. Every other
// field must be equal, including one the server has and want no longer
// declares.
func declared(want, cur any) (bool, error) {
	w, err := asMap(want)
	if err != nil {
		return false, err
	}
	c, err := asMap(cur)
	if err != nil {
		return false, err
	}
	for _, m := range []map[string]any{w, c} {
		if md, ok := m["metadata"].(map[string]any); ok {
			for k := range md {
				if strings.HasPrefix(k, "_nats.") {
					delete(md, k)
				}
			}
		}
	}
	for k, cv := range c {
		if _, ok := w[k]; !ok && !serverFilled[k] && !isZero(cv) && cv != -1.0 {
			return false, nil
		}
	}
	for k, wv := range w {
		cv, ok := c[k]
		if isZero(wv) {
			if ok && !isZero(cv) && cv != -1.0 {
				return false, nil
			}
			continue
		}
		if !ok || !reflect.DeepEqual(wv, cv) {
			return false, nil
		}
	}
	return true, nil
}

// serverFilled are the fields the server sets on every consumer whatever
// it was declared with.
var serverFilled = map[string]bool{"name": true, "max_waiting": true}

func asMap(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	return m, json.Unmarshal(b, &m)
}

func isZero(v any) bool {
	switch v := v.(type) {
	case nil:
		return true
	case bool:
		return !v
	case float64:
		return v == 0
	case string:
		return v == ""
	case []any:
		return len(v) == 0
	case map[string]any:
		return len(v) == 0
	}
	return false
}

package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Identity is one NATS user of an installation. Each service kind has its
// own, allowed only the subjects and JetStream API calls it needs; the
// operator's (cactusctl) may do everything else: create and update the
// topology, replay and drop dead letters, read any stream.
type Identity string

// The identities. A service connects as the identity of its name.
const (
	Gateway     Identity = "gateway"
	Provisioner Identity = "provisioner"
	Botworker   Identity = "botworker"
	Operator    Identity = "operator"
)

// Identities lists every identity, the services first.
func Identities() []Identity { return []Identity{Gateway, Provisioner, Botworker, Operator} }

// InboxPrefix is the prefix of the identity's reply subjects (request
// replies, JetStream API answers, pulled messages). Each identity has its
// own, so that none may subscribe to what is delivered to another: with a
// shared _INBOX.> any identity could read the events pulled by a worker.
func (i Identity) InboxPrefix() string { return "_INBOX_" + string(i) }

// Permissions is what one identity may publish and subscribe to, in NATS
// subject terms. Everything not allowed is denied.
type Permissions struct {
	// All: no restriction (the operator).
	All       bool
	Publish   []string
	Subscribe []string
	// Responses lets the identity answer each request it received once,
	// on the request's reply subject, whatever that subject is.
	Responses bool
}

// producers publish into a stream; the dead-letter stream is fed by the
// gateway and by every identity that consumes (see Permissions). A stream
// added to the topology needs its producers here; a test says so.
var producers = map[string][]Identity{
	StreamTxns:   {Gateway},
	StreamEvents: {Gateway},
	StreamJobs:   {Provisioner},
}

// bucketUsers read, write and watch a key-value bucket. A bucket added to
// the topology needs its users here; a test says so.
var bucketUsers = map[string][]Identity{
	BucketSites:      {Provisioner, Botworker},
	BucketRooms:      {Provisioner, Botworker},
	BucketIndex:      {Provisioner, Botworker},
	BucketLimit:      {Botworker},
	BucketDone:       {Provisioner, Botworker},
	BucketStatus:     {Provisioner, Botworker},
	BucketPartitions: {Botworker},
	BucketSplitter:   {Gateway},
}

// bucketReaders only read a key-value bucket: the gateway's splitter looks
// rooms up in the index to tell comments from commands.
var bucketReaders = map[string][]Identity{
	BucketIndex: {Gateway},
}

// The alias query: who asks, who answers.
var (
	aliasRequester = Gateway
	aliasResponder = Provisioner
)

// ConsumerOwner is the identity whose workers pull from a durable
// consumer: the one whose name the consumer's name is, or starts with
// followed by "-" (botworker, botworker-p03, provisioner-jobs). "" if
// none: a test requires every consumer of the topology to have an owner.
func ConsumerOwner(durable string) Identity {
	for _, id := range []Identity{Gateway, Provisioner, Botworker} {
		if durable == string(id) || strings.HasPrefix(durable, string(id)+"-") {
			return id
		}
	}
	return ""
}

// Permissions derives what id may do from the topology, so that a stream,
// consumer or bucket added to it is covered without a second edit:
//
//   - publishing into a stream: its subjects, and the stream's info;
//   - a durable consumer it owns: its info, pulling (with priority groups,
//     and unpinning a pinned consumer's client), acknowledging, and the info and messages of the
//     stream it reads;
//   - every identity that consumes dead-letters what it cannot handle;
//   - a key-value bucket: its users (bucketUsers) may read it (from the
//     leader too), write and watch it; its readers (bucketReaders) may
//     read keys with direct gets;
//   - the alias query: the gateway asks, the provisioners answer; the
//     gateway queues a resolve job (only that kind) for a query nobody
//     answered; a provisioner deletes the job it queued as a new room's
//     safety net once the room is settled;
//   - replies: each identity its own inbox.
//
// The operator may do everything.
func (t Topology) Permissions(id Identity) Permissions {
	if id == Operator {
		return Permissions{All: true}
	}
	var pub []string
	api := func(s ...string) { pub = append(pub, "$JS.API."+strings.Join(s, ".")) }
	api("INFO")

	produces := func(stream string) {
		for _, sc := range t.Streams() {
			if sc.Name == stream {
				pub = append(pub, sc.Subjects...)
				api("STREAM", "INFO", sc.Name)
			}
		}
	}
	for _, sc := range t.Streams() {
		if slices.Contains(producers[sc.Name], id) {
			produces(sc.Name)
		}
	}

	consumes := false
	for _, cs := range t.Consumers() {
		if ConsumerOwner(cs.Config.Durable) != id {
			continue
		}
		consumes = true
		s, c := cs.Stream, cs.Config.Durable
		api("CONSUMER", "INFO", s, c)
		api("CONSUMER", "MSG", "NEXT", s, c)
		if cs.Config.PriorityPolicy == jetstream.PriorityPolicyPinned {
			// Handing a partition over unpins its owner at once.
			api("CONSUMER", "UNPIN", s, c)
		}
		pub = append(pub, "$JS.ACK."+s+"."+c+".>")
		api("STREAM", "INFO", s)
		api("STREAM", "MSG", "GET", s)
	}
	if consumes || id == Gateway {
		produces(StreamDLQ)
	}
	for _, kc := range t.Buckets() {
		if !slices.Contains(bucketReaders[kc.Bucket], id) {
			continue
		}
		s := "KV_" + kc.Bucket
		api("STREAM", "INFO", s)
		api("DIRECT", "GET", s, ">")
	}
	for _, kc := range t.Buckets() {
		if !slices.Contains(bucketUsers[kc.Bucket], id) {
			continue
		}
		b, s := kc.Bucket, "KV_"+kc.Bucket
		pub = append(pub, "$KV."+b+".>")
		api("STREAM", "INFO", s)
		api("STREAM", "MSG", "GET", s)
		api("DIRECT", "GET", s)
		api("DIRECT", "GET", s, ">")
		// Watches and key listings: an ordered push consumer, created,
		// flow-controlled and deleted by the client.
		api("CONSUMER", "CREATE", s)
		api("CONSUMER", "CREATE", s, ">")
		api("CONSUMER", "INFO", s, ">")
		api("CONSUMER", "DELETE", s, ">")
		pub = append(pub, "$JS.FC."+s+".>")
	}

	p := Permissions{Subscribe: []string{id.InboxPrefix() + ".>"}}
	if id == aliasRequester {
		pub = append(pub, SubjectAliasQuery, JobsOfKind(JobResolve), "$JS.API.STREAM.INFO."+StreamJobs)
	}
	if id == aliasResponder {
		p.Subscribe = append(p.Subscribe, SubjectAliasQuery)
		p.Responses = true
		// A new room's safety net (a job due later) is deleted once the
		// room is settled.
		api("STREAM", "MSG", "DELETE", StreamJobs)
	}
	slices.Sort(pub)
	p.Publish = slices.Compact(pub)
	return p
}

// CheckFor reports what of the topology identity id uses is missing,
// asking only what id may ask (see Permissions): the streams it publishes
// into, its consumers, and the buckets it uses.
func (t Topology) CheckFor(ctx context.Context, js jetstream.JetStream, id Identity) error {
	var errs []error
	consumes := false
	for _, cs := range t.Consumers() {
		if ConsumerOwner(cs.Config.Durable) != id {
			continue
		}
		consumes = true
		if _, err := js.Consumer(ctx, cs.Stream, cs.Config.Durable); err != nil {
			errs = append(errs, fmt.Errorf("consumer %s: %w", cs.Config.Durable, err))
		}
	}
	for _, sc := range t.Streams() {
		if !slices.Contains(producers[sc.Name], id) && !(sc.Name == StreamDLQ && (consumes || id == Gateway)) {
			continue
		}
		if _, err := js.Stream(ctx, sc.Name); err != nil {
			errs = append(errs, fmt.Errorf("stream %s: %w", sc.Name, err))
		}
	}
	for _, kc := range t.Buckets() {
		if !slices.Contains(bucketUsers[kc.Bucket], id) {
			continue
		}
		if _, err := js.KeyValue(ctx, kc.Bucket); err != nil {
			errs = append(errs, fmt.Errorf("bucket %s: %w", kc.Bucket, err))
		}
	}
	return errors.Join(errs...)
}

package bus

import (
	"slices"
	"strings"
	"testing"
)

// subjectMatches is NATS subject matching: "*" one token, ">" the rest.
func subjectMatches(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, tok := range p {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) || (tok != "*" && tok != s[i]) {
			return false
		}
	}
	return len(p) == len(s)
}

func allowed(list []string, subject string) bool {
	return slices.ContainsFunc(list, func(p string) bool { return subjectMatches(p, subject) })
}

// TestTopologyHasOwners: every consumer belongs to an identity and every
// stream has producers, so a consumer, stream or bucket added to the
// topology gets its permissions without a second edit, or fails here.
func TestTopologyHasOwners(t *testing.T) {
	topo := Topology{}
	for _, cs := range topo.Consumers() {
		if ConsumerOwner(cs.Config.Durable) == "" {
			t.Errorf("consumer %s has no owner: name it <identity> or <identity>-<what>", cs.Config.Durable)
		}
	}
	for _, sc := range topo.Streams() {
		if len(producers[sc.Name]) == 0 && sc.Name != StreamDLQ {
			t.Errorf("stream %s has no producers in access.go", sc.Name)
		}
	}
	for _, kc := range topo.Buckets() {
		if len(bucketUsers[kc.Bucket]) == 0 {
			t.Errorf("bucket %s has no users in access.go", kc.Bucket)
		}
	}
}

func TestPermissions(t *testing.T) {
	topo := Topology{}
	type check struct {
		id      Identity
		pub     []string // must be allowed
		noPub   []string // must be denied
		sub     []string
		noSub   []string
		respond bool
	}
	checks := []check{
		{
			id: Gateway,
			pub: []string{EventSubject(ClassBot, "!r:x"), DLQSubject("gateway"), SubjectAliasQuery, "$JS.API.STREAM.INFO." + StreamEvents, "$JS.API.INFO",
				// The splitter: transactions in, its consumer, its lease.
				SubjectTxns, "$JS.API.STREAM.INFO." + StreamTxns, "$JS.API.CONSUMER.MSG.NEXT." + StreamTxns + ".gateway-splitter-p00",
				"$JS.ACK." + StreamTxns + ".gateway-splitter-p00.1.2.3.4.5", "$JS.API.CONSUMER.UNPIN." + StreamTxns + ".gateway-splitter-p00",
				"$KV." + BucketSplitter + ".gateway-splitter.claims.0", "$JS.API.STREAM.INFO.KV_" + BucketSplitter,
				// A resolve job for an alias query nobody answered.
				JobSubject(JobResolve, "s", "#comments_s_a:x"),
				// The splitter reads the room index (and cannot write it).
				"$JS.API.STREAM.INFO.KV_" + BucketIndex, "$JS.API.DIRECT.GET.KV_" + BucketIndex + ".$KV." + BucketIndex + ".k"},
			noPub: []string{"$JS.API.STREAM.DELETE." + StreamEvents, "$KV." + BucketPartitions + ".k", "$KV." + BucketIndex + ".k", "$JS.API.STREAM.PURGE." + StreamTxns, "$JS.API.CONSUMER.CREATE." + StreamEvents + ".x", "$JS.API.CONSUMER.MSG.NEXT." + StreamEvents + ".botworker-p00", "$JS.API.STREAM.MSG.GET." + StreamEvents, "$KV." + BucketSites + ".k", JobSubject("ban", "s", "!r:x"), "$JS.API.STREAM.PURGE." + StreamDLQ},
			sub:   []string{"_INBOX_gateway.abc.1"},
			noSub: []string{SubjectEventsAll, "_INBOX.x", "_INBOX_botworker.x", SubjectAliasQuery, ">"},
		},
		{
			id: Provisioner,
			pub: []string{JobSubject("ban", "s", "!r:x"), DLQSubject(ConsumerJobs), "$JS.API.CONSUMER.MSG.NEXT." + StreamEvents + "." + ConsumerModeration, "$JS.ACK." + StreamJobs + "." + ConsumerJobs + ".1.2.3.4.5", "$KV." + BucketSites + ".k", "$JS.API.DIRECT.GET.KV_" + BucketRooms + ".$KV." + BucketRooms + ".k",
				// The safety net of a new room it settled.
				"$JS.API.STREAM.MSG.DELETE." + StreamJobs},
			noPub: []string{EventSubject(ClassBot, "!r:x"), "$JS.API.STREAM.MSG.DELETE." + StreamEvents, "$JS.API.STREAM.MSG.DELETE.KV_" + BucketSites, "$JS.API.CONSUMER.MSG.NEXT." + StreamEvents + ".botworker-p00", "$JS.API.CONSUMER.MSG.NEXT." + StreamEvents + "." + RetiredConsumerBot, "$JS.API.STREAM.DELETE." + StreamJobs, "$JS.API.STREAM.UPDATE.KV_" + BucketSites, SubjectAliasQuery,
				SubjectTxns, "$KV." + BucketSplitter + ".k", "$JS.API.CONSUMER.MSG.NEXT." + StreamTxns + ".gateway-splitter-p00",
				// Buckets of the bot alone.
				"$KV." + BucketPartitions + ".k", "$JS.API.DIRECT.GET.KV_" + BucketPartitions, "$KV." + BucketLimit + ".k",
				// Nothing of its own is pinned.
				"$JS.API.CONSUMER.UNPIN." + StreamJobs + "." + ConsumerJobs},
			sub:     []string{SubjectAliasQuery, "_INBOX_provisioner.x"},
			noSub:   []string{SubjectEventsAll, "_INBOX_gateway.x"},
			respond: true,
		},
		{
			id: Botworker,
			pub: []string{DLQSubject("botworker-p00"), "$JS.API.CONSUMER.MSG.NEXT." + StreamEvents + ".botworker-p15", "$KV." + BucketLimit + ".k",
				"$KV." + BucketPartitions + ".botworker.members.x", "$JS.API.CONSUMER.UNPIN." + StreamEvents + ".botworker-p03",
				"$KV." + BucketDone + ".k", "$KV." + BucketStatus + ".k", "$JS.API.STREAM.MSG.GET.KV_" + BucketSites},
			noPub: []string{EventSubject(ClassBot, "!r:x"), SubjectTxns, "$KV." + BucketSplitter + ".k", JobSubject("ban", "s", "!r:x"), "$JS.API.CONSUMER.MSG.NEXT." + StreamEvents + "." + ConsumerModeration},
			sub:   []string{"_INBOX_botworker.x"},
			noSub: []string{SubjectAliasQuery, SubjectEventsAll},
		},
	}
	for _, c := range checks {
		p := topo.Permissions(c.id)
		if p.All {
			t.Fatalf("%s may do everything", c.id)
		}
		for _, s := range c.pub {
			if !allowed(p.Publish, s) {
				t.Errorf("%s may not publish to %s", c.id, s)
			}
		}
		for _, s := range c.noPub {
			if allowed(p.Publish, s) {
				t.Errorf("%s may publish to %s", c.id, s)
			}
		}
		for _, s := range c.sub {
			if !allowed(p.Subscribe, s) {
				t.Errorf("%s may not subscribe to %s", c.id, s)
			}
		}
		for _, s := range c.noSub {
			if allowed(p.Subscribe, s) {
				t.Errorf("%s may subscribe to %s", c.id, s)
			}
		}
		if p.Responses != c.respond {
			t.Errorf("%s answers requests: %v, want %v", c.id, p.Responses, c.respond)
		}
	}
	if !topo.Permissions(Operator).All {
		t.Error("the operator is restricted")
	}
}

func TestSubjectMatches(t *testing.T) {
	for _, tt := range []struct {
		p, s string
		want bool
	}{
		{"a.>", "a.b.c", true}, {"a.>", "a", false}, {"a.*", "a.b", true}, {"a.*", "a.b.c", false}, {"a.b", "a.b", true}, {"a.b", "a.c", false},
	} {
		if subjectMatches(tt.p, tt.s) != tt.want {
			t.Errorf("%s ~ %s", tt.p, tt.s)
		}
	}
}

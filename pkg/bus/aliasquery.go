package bus

// The alias query protocol between gateways and provisioners. A gateway
// sends an AliasQuery as a NATS request on SubjectAliasQuery; one member of
// the QueueProvisioners queue group answers with an AliasAnswer.
//
// What the gateway answers the homeserver:
//
//   - Exists: 200 {} (the room exists now, created or found).
//   - !Exists: 404 M_NOT_FOUND with Error as the message. This covers an
//     unknown site and a homeserver error while creating the room (the
//     homeserver's message goes in Error, as the original appservice did):
//     a homeserver treats every non-200 alike (the join fails), so a
//     finer distinction would change nothing for it.
//   - No answer (no provisioner subscribed, or none answered within the
//     gateway's CACTUS_ALIAS_QUERY_TIMEOUT), or an answer that is not an
//     AliasAnswer: 503 M_UNKNOWN, and the gateway logs why.
//
// A provisioner that cannot decide (its registry is unreachable) should not
// answer at all rather than guess: the gateway then answers 503.

// AliasQuery is the request on SubjectAliasQuery.
type AliasQuery struct {
	// Alias is the full alias the homeserver asked about, decoded once
	// from the request path, e.g. "#comments_blog.example.org_/posts/a:example.org".
	// The gateway sends only aliases of our namespace that name a comment
	// section room.
	Alias string `json:"alias"`
}

// AliasAnswer is the reply to an AliasQuery.
type AliasAnswer struct {
	// Exists is true when the room exists and the homeserver may resolve
	// the alias.
	Exists bool `json:"exists"`
	// Error says why the room does not exist; shown to the homeserver.
	Error string `json:"error,omitempty"`
}

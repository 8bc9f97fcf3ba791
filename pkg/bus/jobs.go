package bus

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// Fan-out jobs, on the jobs stream (StreamJobs): provisioners queue and
// run them; the gateway queues a resolve job for an alias query that no
// provisioner answered.

// Job kinds. Every job makes one room match its site's snapshot as it is
// when the job runs, not as it was when the job was queued: redelivered,
// reordered or duplicated jobs therefore all converge on the same state.
const (
	// JobMember: the membership of User in Room follows the snapshot's
	// ban list (banned, or unbanned).
	JobMember = "member"
	// JobPower: Room's power levels follow the snapshot's, as far as the
	// bot may change them.
	JobPower = "power"
	// JobSync: every user of the snapshot's ban list is banned in Room
	// (a new room whose bans failed at creation).
	JobSync = "sync"
	// JobResolve: a comment room whose createRoom had an unknown outcome
	// (timeout, lost connection, 5xx): Alias is looked up, and a room
	// found is recorded and synced as JobSync does.
	JobResolve = "resolve"
)

// Job is one unit of fan-out work: one room of one site.
type Job struct {
	Kind string `json:"kind"`
	Site string `json:"site"`
	Room string `json:"room"`
	User string `json:"user,omitempty"`
	// Alias and Section name the comment room of a JobResolve job.
	Alias   string `json:"alias,omitempty"`
	Section string `json:"section,omitempty"`
	Cause   string `json:"cause"` // the event (or room creation) that caused it
	// Recheck asks the job to read the room's state before acting: an
	// earlier run of its cause (a retry, a replay) may have acted already.
	Recheck bool `json:"recheck,omitempty"`
	// NotBefore, if set, is when the job is due: a safety net queued
	// ahead of work that, once done, deletes it.
	NotBefore time.Time `json:"not_before,omitzero"`
}

// MsgID names a job for JetStream's deduplication: a moderation event
// redelivered after its jobs were queued queues none twice.
func (j Job) MsgID() string {
	return j.Cause + "|" + j.Kind + "|" + j.Target() + "|" + j.User
}

// Target is the room the job is about: its id, or for a JobResolve job
// its alias.
func (j Job) Target() string {
	if j.Kind == JobResolve {
		return j.Alias
	}
	return j.Room
}

// Msg is the job as a message for the jobs stream.
func (j Job) Msg() (*nats.Msg, error) {
	b, err := json.Marshal(j)
	if err != nil {
		return nil, fmt.Errorf("encode job: %w", err)
	}
	m := nats.NewMsg(JobSubject(j.Kind, j.Site, j.Target()))
	m.Header.Set(HeaderMsgID, j.MsgID())
	m.Data = b
	return m, nil
}

// JobsOfKind is the subject filter of every job of kind.
func JobsOfKind(kind string) string { return "cactus.job." + kind + ".>" }

// ResolveJob is the job that looks up the alias of a comment room (site,
// section) whose creation may have happened without being recorded: a
// createRoom with an unknown outcome, or an alias query nobody answered.
// Every queuer builds it alike, so JetStream keeps one per alias within
// the duplicate window.
func ResolveJob(site, section, alias string) Job {
	return Job{Kind: JobResolve, Site: site, Section: section, Alias: alias, Cause: "create:" + alias}
}

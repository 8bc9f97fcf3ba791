package bus

import "github.com/cactus-comments/appservice/pkg/event"

// Classify decides which workers see an event. bot is the bot's user id.
//
// Visitors joining and leaving comment rooms are by far the most common
// member events; they go to ClassOther so that the moderation consumer only
// sees what can change moderation state. For the same reason the bot's own
// bans, unbans and power levels go there too: the bot only ever sends them
// to propagate a change it already recorded, and a fan-out over N rooms
// would otherwise send N echoes through the moderation consumer. So do the
// bot's own messages (its replies), which the bot worker never reads.
//
// A room's tombstone (it was upgraded) is a moderation event whoever sent
// it, the bot included: the registry must follow the replacement room, and
// upgrades are rare enough to cost nothing.
func Classify(e *event.Event, bot string) Class {
	c := classify(e, bot)
	if c == ClassModeration && e.Sender == bot && e.Type != "m.room.tombstone" {
		return ClassOther
	}
	return c
}

func classify(e *event.Event, bot string) Class {
	switch e.Type {
	case "m.room.message":
		if e.Sender == bot {
			// Its own replies: the bot worker reads none.
			return ClassOther
		}
		return ClassBot
	case "m.room.power_levels", "m.room.canonical_alias":
		return ClassModeration
	case "m.room.tombstone":
		if e.StateKey != nil && *e.StateKey == "" {
			return ClassModeration
		}
	case "m.room.member":
		if e.StateKey == nil {
			return ClassOther
		}
		if *e.StateKey == bot {
			return ClassBot
		}
		membership, ok := e.MembershipField()
		if !ok {
			// No membership to read: the moderation consumer dead-letters
			// it with its reason. Taken as "not a ban" it would vanish
			// unseen among the events no worker reads.
			return ClassModeration
		}
		switch membership {
		case "ban":
			// Even with content that does not decode otherwise (a reason
			// that is no string): the homeserver applied it.
			return ClassModeration
		case "leave":
			// Someone else made them leave: an unban or a kick.
			if e.Sender != *e.StateKey {
				return ClassModeration
			}
		}
	}
	return ClassOther
}

// Stored reports whether events of class c go to the event stream, one
// message each. ClassOther has no reader: the homeserver keeps every
// room's history, and storing each of those events a second time would
// cost more than the rest of the work on them (they are most events).
func (c Class) Stored() bool { return c != ClassOther }

// InOurRoom is the class of an event of class c and type typ sent in one
// of our comment or moderation rooms. The bot reads no command there (see
// the botworker), so a message there, a comment, has no reader.
func InOurRoom(c Class, typ string) Class {
	if c == ClassBot && typ == "m.room.message" {
		return ClassOther
	}
	return c
}

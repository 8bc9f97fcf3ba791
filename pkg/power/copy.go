package power

import "github.com/cactus-comments/appservice/pkg/matrix"

// CopyFor is what a site's power levels pl, read in room src (the
// moderation room), become in room dst (a comment room, possibly of
// another version): the content to create dst with, or to reconcile it
// towards.
//
//   - dst's creators are dropped from users when dst is of version 12 or
//     later: they have infinite power there, and a homeserver refuses a
//     content naming them;
//   - src's creators (when src is of version 12 or later) have no entry in
//     pl, and are no creators of dst: they get an explicit 100 unless the
//     content already names them, so that a site owner who upgraded the
//     moderation room keeps their power in every comment room;
//   - before version 12 dst's creator has no power of its own either: it
//     gets an explicit 100 unless named, so that the bot keeps its power
//     in dst (Synapse also refuses a createRoom override whose users lack
//     the creator);
//   - nobody is ever made a creator: CopyFor only writes power levels.
//
// pl is not modified; a nil pl copies as an empty content.
func CopyFor(src Room, pl *matrix.PowerLevels, dst Room) *matrix.PowerLevels {
	out := pl.Clone()
	if out == nil {
		out = &matrix.PowerLevels{}
	}
	for _, c := range dst.Creators() {
		delete(out.Users, c)
	}
	keep := src.Creators()
	if !dst.PrivilegedCreators() {
		keep = append(keep, dst.Creator)
	}
	for _, c := range keep {
		if c == "" || dst.IsCreator(c) {
			continue
		}
		if _, listed := out.Users[c]; !listed {
			out.SetUserLevel(c, AdminLevel)
		}
	}
	return out
}

package partition

import (
	"cmp"
	"encoding/binary"
	"hash/fnv"
	"slices"
)

// Assign returns the owner of each of n partitions among members: owners[p]
// is a member, or "" when there are no members. Every member computes it
// from the member set alone, so members that see the same set agree
// without talking to each other.
//
// It is rendezvous (highest-random-weight) hashing with bounded loads:
// every (partition, member) pair has a pseudo-random weight, and the pairs
// are taken from the heaviest down, each member taking up to ⌊n/m⌋
// partitions of m members and the first n mod m members to want one more
// getting it. So the load is as even as it can be (every member owns
// ⌊n/m⌋ or ⌈n/m⌉; members beyond n own nothing and stand by), and a member
// joining or leaving moves few partitions: those the newcomer takes or the
// leaver held, and a few whose owner's share changed (about twice the
// newcomer's share on average; see TestAssignMovement). Plain rendezvous
// hashing moves the fewest but balances poorly with few partitions per
// member: with 16 partitions over 8 replicas the busiest replica would own
// 4 on average (up to 7) while others idle, so scaling out would barely
// add capacity.
func Assign(n int, members []string) []string {
	owners := make([]string, max(n, 0))
	ms := slices.Clone(members)
	slices.Sort(ms)
	ms = slices.Compact(ms)
	if len(ms) == 0 || n <= 0 {
		return owners
	}
	type pair struct {
		p int
		m string
		w uint64
	}
	pairs := make([]pair, 0, n*len(ms))
	for p := range n {
		for _, m := range ms {
			pairs = append(pairs, pair{p, m, weight(m, p)})
		}
	}
	slices.SortFunc(pairs, func(a, b pair) int {
		if c := cmp.Compare(b.w, a.w); c != 0 {
			return c
		}
		if c := cmp.Compare(a.m, b.m); c != 0 {
			return c
		}
		return cmp.Compare(a.p, b.p)
	})
	load := make(map[string]int, len(ms))
	floor, extra := n/len(ms), n%len(ms)
	for _, pr := range pairs {
		if owners[pr.p] != "" {
			continue
		}
		switch l := load[pr.m]; {
		case l < floor:
		case l == floor && extra > 0:
			extra--
		default:
			continue
		}
		owners[pr.p] = pr.m
		load[pr.m]++
	}
	return owners
}

// Owned is the sorted list of partitions Assign gives member.
func Owned(n int, members []string, member string) []int {
	var ps []int
	for p, m := range Assign(n, members) {
		if m == member {
			ps = append(ps, p)
		}
	}
	return ps
}

// weight is the pair's pseudo-random weight: FNV-1a of the member and the
// partition, finished with the splitmix64 mixer so that weights of
// neighbouring partitions are unrelated.
func weight(member string, p int) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(member))
	var b [9]byte // a 0 byte ends the member id: "a"+"1" differs from "a1"+""
	binary.BigEndian.PutUint64(b[1:], uint64(p))
	_, _ = h.Write(b[:])
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

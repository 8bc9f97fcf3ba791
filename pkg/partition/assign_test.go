package partition

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

func names(prefix string, m int) []string {
	ms := make([]string, m)
	for i := range ms {
		ms[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return ms
}

func loads(owners []string) map[string]int {
	l := map[string]int{}
	for _, o := range owners {
		l[o]++
	}
	return l
}

func TestAssignBalance(t *testing.T) {
	for _, n := range []int{1, 2, 7, 8, 16, 64} {
		for m := 1; m <= 24; m++ {
			for k := range 5 {
				ms := names(fmt.Sprintf("botworker-%d", k), m)
				owners := Assign(n, ms)
				if len(owners) != n {
					t.Fatalf("Assign(%d, %d members) gave %d owners", n, m, len(owners))
				}
				l := loads(owners)
				if l[""] != 0 {
					t.Fatalf("Assign(%d, %d members) left %d partitions without owner", n, m, l[""])
				}
				busy := 0
				for _, member := range ms {
					if got := l[member]; got < n/m || got > (n+m-1)/m {
						t.Fatalf("Assign(%d, %v): %s owns %d, want %d or %d", n, ms, member, got, n/m, (n+m-1)/m)
					}
					if l[member] > 0 {
						busy++
					}
				}
				if busy != min(n, m) {
					t.Fatalf("Assign(%d, %d members): %d members own partitions, want %d", n, m, busy, min(n, m))
				}
			}
		}
	}
}

func TestAssignEdges(t *testing.T) {
	if got := Assign(4, nil); !slices.Equal(got, []string{"", "", "", ""}) {
		t.Errorf("no members: %q", got)
	}
	if got := Assign(0, []string{"a"}); len(got) != 0 {
		t.Errorf("no partitions: %q", got)
	}
	if got := Assign(-1, []string{"a"}); len(got) != 0 {
		t.Errorf("negative partitions: %q", got)
	}
	if got := Owned(3, []string{"a"}, "a"); !slices.Equal(got, []int{0, 1, 2}) {
		t.Errorf("Owned of the only member = %v", got)
	}
	if got := Owned(3, []string{"a"}, "b"); got != nil {
		t.Errorf("Owned of a non-member = %v", got)
	}
}

// Every member computes the same assignment from the same set, whatever
// the order it learnt the members in, and duplicates change nothing.
func TestAssignDeterministic(t *testing.T) {
	ms := names("host", 5)
	want := Assign(16, ms)
	r := rand.New(rand.NewPCG(1, 2))
	for range 50 {
		shuffled := slices.Clone(ms)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		shuffled = append(shuffled, shuffled[:r.IntN(len(shuffled))]...)
		if got := Assign(16, shuffled); !slices.Equal(got, want) {
			t.Fatalf("Assign(16, %v) = %v, want %v", shuffled, got, want)
		}
	}
}

// The assignment is part of the protocol between replicas: during a
// rolling upgrade old and new replicas must agree on it. Changing the
// algorithm or the weights changes this table; do it knowingly (replicas
// then fight over partitions until every one runs the new code, which the
// claims keep safe but slow).
func TestAssignStable(t *testing.T) {
	tests := []struct {
		n       int
		members []string
		want    []string
	}{
		{8, []string{"a", "b", "c"}, []string{"a", "a", "b", "b", "c", "b", "c", "c"}},
		{4, []string{"botworker-7d9f-x2", "botworker-7d9f-k8"}, []string{"botworker-7d9f-x2", "botworker-7d9f-x2", "botworker-7d9f-k8", "botworker-7d9f-k8"}},
	}
	for _, tt := range tests {
		if got := Assign(tt.n, tt.members); !slices.Equal(got, tt.want) {
			t.Errorf("Assign(%d, %q) = %q, want %q", tt.n, tt.members, got, tt.want)
		}
	}
}

// A member joining or leaving moves the partitions it takes or gives up,
// and on average not much more: at most three times its share (measured:
// about twice on average, see Assign). The minimum any balanced scheme
// must move is the newcomer's share.
func TestAssignMovement(t *testing.T) {
	const sets = 40
	for _, n := range []int{8, 16, 64} {
		for m := 1; m <= 20; m++ {
			var joinMoves, joinShare, leaveMoves, leaveShare int
			for k := range sets {
				ms := names(fmt.Sprintf("pod-%d", k), m+1)
				before, after := Assign(n, ms[:m]), Assign(n, ms)
				moved, share := 0, 0
				for p := range after {
					if before[p] != after[p] {
						moved++
					}
					if after[p] == ms[m] {
						share++
					}
				}
				if moved < share {
					t.Fatalf("n=%d m=%d: %d moves but the newcomer took %d", n, m, moved, share)
				}
				joinMoves += moved
				joinShare += share

				// Member k%(m+1) leaves the m+1.
				leaver := ms[k%(m+1)]
				rest := slices.DeleteFunc(slices.Clone(ms), func(s string) bool { return s == leaver })
				gone := Assign(n, rest)
				for p := range after {
					if after[p] != gone[p] {
						leaveMoves++
					}
					if after[p] == leaver {
						leaveShare++
						if gone[p] == leaver {
							t.Fatalf("n=%d: %s left but still owns partition %d", n, leaver, p)
						}
					}
				}
			}
			if float64(joinMoves) > 3*float64(joinShare)+0.5*sets {
				t.Errorf("n=%d, %d→%d members: %.2f partitions move on average for a newcomer's share of %.2f",
					n, m, m+1, float64(joinMoves)/sets, float64(joinShare)/sets)
			}
			if float64(leaveMoves) > 3*float64(leaveShare)+0.5*sets {
				t.Errorf("n=%d, %d→%d members: %.2f partitions move on average for a leaver's share of %.2f",
					n, m+1, m, float64(leaveMoves)/sets, float64(leaveShare)/sets)
			}
		}
	}
}

package provisioner

import (
	"encoding/json"
	"testing"

	"github.com/cactus-comments/appservice/pkg/matrix"
)

func pl(t testing.TB, s string) *matrix.PowerLevels {
	t.Helper()
	var p matrix.PowerLevels
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	return &p
}

// A job sets power levels only when they differ: contents that mean the
// same must compare equal, whatever the key order and spacing.
func TestSamePowerLevels(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		same bool
	}{
		{`{"users":{"@a:x":100,"@b:x":50},"ban":50}`, `{"ban":50, "users":{"@b:x":50,"@a:x":100}}`, true},
		{`{"users":{"@a:x":100}}`, `{"users":{"@a:x":"100"}}`, true},
		{`{"users":{"@a:x":100},"m.custom":{"y":1,"x":2}}`, `{"m.custom":{"x":2,"y":1},"users":{"@a:x":100}}`, true},
		{`{"users":{"@a:x":100}}`, `{"users":{"@a:x":99}}`, false},
		{`{"users":{}}`, `{}`, false},
	} {
		if got := samePowerLevels(pl(t, tc.a), pl(t, tc.b)); got != tc.same {
			t.Errorf("samePowerLevels(%s, %s) = %v, want %v", tc.a, tc.b, got, tc.same)
		}
	}
}

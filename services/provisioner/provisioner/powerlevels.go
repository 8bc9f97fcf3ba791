package provisioner

import (
	"bytes"
	"encoding/json"

	"github.com/cactus-comments/appservice/pkg/matrix"
)

// canonicalJSON encodes v with sorted keys and uniform spacing, so that two
// contents that mean the same compare equal byte for byte.
func canonicalJSON(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var generic any
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(&generic); err != nil {
		return nil, err
	}
	return json.Marshal(generic)
}

// samePowerLevels reports whether a and b are the same content.
func samePowerLevels(a, b *matrix.PowerLevels) bool {
	ca, err1 := canonicalJSON(a)
	cb, err2 := canonicalJSON(b)
	return err1 == nil && err2 == nil && bytes.Equal(ca, cb)
}

package hssim

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/go-json-experiment/json/jsontext"
)

// appendCanonical appends v, valid JSON, re-encoded the way Synapse's
// canonicaljson (Python's json with sort_keys, ensure_ascii=False and no
// spaces) and serde_json's default map (a BTreeMap) write a value they
// parsed: object members sorted by key in code point order (the byte order
// of UTF-8), no insignificant whitespace, strings with only '"', '\\' and
// the control characters escaped (non-ASCII, '<', '>', '&', U+2028 and
// U+2029 as they are). Numbers are copied as written: the simulator does
// not imitate how each server reformats fractions and exponents.
func appendCanonical(dst []byte, v []byte) ([]byte, error) {
	d := jsontext.NewDecoder(bytes.NewReader(v))
	dst, err := appendCanonicalValue(dst, d)
	if err != nil {
		return nil, fmt.Errorf("canonical JSON: %w", err)
	}
	return dst, nil
}

// canonical is appendCanonical of a value the simulator wrote or checked.
func canonical(v []byte) jsontext.Value {
	out, err := appendCanonical(nil, v)
	if err != nil {
		panic(err) // stored values are valid JSON
	}
	return out
}

func appendCanonicalValue(dst []byte, d *jsontext.Decoder) ([]byte, error) {
	tok, err := d.ReadToken()
	if err != nil {
		return nil, err
	}
	switch tok.Kind() {
	case '{':
		type member struct {
			name string
			val  []byte
		}
		var ms []member
		for d.PeekKind() != '}' {
			name, err := d.ReadToken()
			if err != nil {
				return nil, err
			}
			m := member{name: name.String()}
			if m.val, err = appendCanonicalValue(nil, d); err != nil {
				return nil, err
			}
			ms = append(ms, m)
		}
		if _, err := d.ReadToken(); err != nil {
			return nil, err
		}
		slices.SortFunc(ms, func(a, b member) int { return strings.Compare(a.name, b.name) })
		dst = append(dst, '{')
		for i, m := range ms {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendMinimalQuote(dst, m.name)
			dst = append(dst, ':')
			dst = append(dst, m.val...)
		}
		return append(dst, '}'), nil
	case '[':
		dst = append(dst, '[')
		for i := 0; d.PeekKind() != ']'; i++ {
			if i > 0 {
				dst = append(dst, ',')
			}
			if dst, err = appendCanonicalValue(dst, d); err != nil {
				return nil, err
			}
		}
		if _, err := d.ReadToken(); err != nil {
			return nil, err
		}
		return append(dst, ']'), nil
	case '"':
		return appendMinimalQuote(dst, tok.String()), nil
	case '0':
		return append(dst, tok.String()...), nil
	}
	return append(dst, tok.String()...), nil // null, true, false
}

// appendMinimalQuote writes s as a JSON string as Python's json
// (ensure_ascii=False) and serde_json do: '"' and '\\' escaped, \b \f \n
// \r \t as such, other control characters as \u00xx with lower-case hex,
// everything else as it is.
func appendMinimalQuote(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			if c < 0x20 {
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
				continue
			}
			dst = append(dst, c)
		}
	}
	return append(dst, '"')
}

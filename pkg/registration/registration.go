// Package registration reads, validates and writes appservice registration
// files (the YAML document a homeserver loads to know an appservice), and
// matches ids against their namespaces the way each homeserver does.
package registration

import (
	"errors"
	"fmt"
	"os"
	"regexp"

	"gopkg.in/yaml.v3"
)

// Namespace is one entry of namespaces.users, .aliases or .rooms.
type Namespace struct {
	Exclusive bool   `yaml:"exclusive" json:"exclusive"`
	Regex     string `yaml:"regex" json:"regex"`
}

// Namespaces groups the three namespace lists of a registration.
type Namespaces struct {
	Users   []Namespace `yaml:"users,omitempty" json:"users,omitempty"`
	Aliases []Namespace `yaml:"aliases,omitempty" json:"aliases,omitempty"`
	Rooms   []Namespace `yaml:"rooms,omitempty" json:"rooms,omitempty"`
}

// Registration is an appservice registration file.
type Registration struct {
	ID string `yaml:"id" json:"id"`
	// URL is nil when the file says `url: null`: the homeserver then pushes
	// nothing and queries nothing. A missing url key is an error (Synapse
	// refuses it so that push is never switched off by accident).
	URL             *string    `yaml:"url" json:"url"`
	ASToken         string     `yaml:"as_token" json:"as_token"`
	HSToken         string     `yaml:"hs_token" json:"hs_token"`
	SenderLocalpart string     `yaml:"sender_localpart" json:"sender_localpart"`
	Namespaces      Namespaces `yaml:"namespaces" json:"namespaces"`
	// RateLimited nil means the homeserver default (Synapse: true).
	RateLimited      *bool    `yaml:"rate_limited,omitempty" json:"rate_limited,omitempty"`
	Protocols        []string `yaml:"protocols,omitempty" json:"protocols,omitempty"`
	ReceiveEphemeral bool     `yaml:"receive_ephemeral,omitempty" json:"receive_ephemeral,omitempty"`
}

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = errors.New("invalid appservice registration")

// Parse decodes a registration (YAML, or JSON which is YAML too), tolerating
// unknown keys as real homeservers do, and validates it.
func Parse(data []byte) (*Registration, error) {
	var raw map[string]any
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if raw == nil {
		return nil, fmt.Errorf("%w: empty document", ErrInvalid)
	}
	if err := checkPresence(raw); err != nil {
		return nil, err
	}
	var r Registration
	if err := yaml.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// checkPresence catches what the typed decode cannot tell apart from a zero
// value: a missing url (only an explicit null disables push) and a
// namespace entry without a boolean exclusive flag.
func checkPresence(raw map[string]any) error {
	u, ok := raw["url"]
	if !ok {
		return fmt.Errorf("%w: url is required (write `url: null` to disable pushing)", ErrInvalid)
	}
	if _, isStr := u.(string); u != nil && !isStr {
		return fmt.Errorf("%w: url must be a string or null", ErrInvalid)
	}
	ns, _ := raw["namespaces"].(map[string]any)
	for _, kind := range []string{"users", "aliases", "rooms"} {
		list, ok := ns[kind]
		if !ok || list == nil {
			continue
		}
		entries, ok := list.([]any)
		if !ok {
			return fmt.Errorf("%w: namespaces.%s must be a list", ErrInvalid, kind)
		}
		for i, e := range entries {
			m, ok := e.(map[string]any)
			if !ok {
				return fmt.Errorf("%w: namespaces.%s[%d] must be a mapping", ErrInvalid, kind, i)
			}
			if _, ok := m["exclusive"].(bool); !ok {
				return fmt.Errorf("%w: namespaces.%s[%d].exclusive must be true or false", ErrInvalid, kind, i)
			}
			if _, ok := m["regex"].(string); !ok {
				return fmt.Errorf("%w: namespaces.%s[%d].regex must be a string", ErrInvalid, kind, i)
			}
		}
	}
	return nil
}

// Validate checks the required fields and that every regex compiles.
func (r *Registration) Validate() error {
	for _, f := range []struct{ name, v string }{
		{"id", r.ID}, {"as_token", r.ASToken}, {"hs_token", r.HSToken}, {"sender_localpart", r.SenderLocalpart},
	} {
		if f.v == "" {
			return fmt.Errorf("%w: %s is required", ErrInvalid, f.name)
		}
	}
	if r.ASToken == r.HSToken {
		return fmt.Errorf("%w: as_token and hs_token must differ", ErrInvalid)
	}
	for kind, list := range map[string][]Namespace{"users": r.Namespaces.Users, "aliases": r.Namespaces.Aliases, "rooms": r.Namespaces.Rooms} {
		for i, ns := range list {
			if ns.Regex == "" {
				return fmt.Errorf("%w: namespaces.%s[%d].regex is empty", ErrInvalid, kind, i)
			}
			if _, err := regexp.Compile(ns.Regex); err != nil {
				return fmt.Errorf("%w: namespaces.%s[%d].regex: %v", ErrInvalid, kind, i, err)
			}
		}
	}
	return nil
}

// Load reads and parses a registration file.
func Load(path string) (*Registration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read registration: %w", err)
	}
	r, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("registration %s: %w", path, err)
	}
	return r, nil
}

// Marshal writes the registration as YAML (url: null when URL is nil).
func (r *Registration) Marshal() ([]byte, error) {
	out, err := yaml.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("marshal registration: %w", err)
	}
	return out, nil
}

// RateLimitedOrDefault reports whether the homeserver rate limits this
// appservice: true unless the file says rate_limited: false.
func (r *Registration) RateLimitedOrDefault() bool {
	return r.RateLimited == nil || *r.RateLimited
}

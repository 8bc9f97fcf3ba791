// Package envconf builds a config.Config from any source of CACTUS_*
// variables, not only the process environment: the operator CLI reads
// .env files, and the dev runner configures three services in one process
// without touching the process environment.
package envconf

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cactus-comments/appservice/pkg/config"
)

// Lookup returns the value of a variable and whether it is set.
type Lookup = config.Lookup

// Env is the process environment.
func Env() Lookup { return os.LookupEnv }

// Map looks variables up in m.
func Map(m map[string]string) Lookup {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// Chain tries each lookup in turn; the first that has the variable wins.
func Chain(ls ...Lookup) Lookup {
	return func(k string) (string, bool) {
		for _, l := range ls {
			if l == nil {
				continue
			}
			if v, ok := l(k); ok {
				return v, true
			}
		}
		return "", false
	}
}

// Fill sets every field of a Config from lookup, falling back to the
// field's default, without checking required variables or validating. It is
// what commands that only need part of the configuration (the NATS
// settings) use.
func Fill(lookup Lookup) (*config.Config, error) { return config.Parse(lookup) }

// Load reads and validates the whole configuration exactly as the
// services do (config.LoadFrom): every problem, one line each.
func Load(lookup Lookup) (*config.Config, error) { return config.LoadFrom(lookup) }

// ParseFile reads a .env file: KEY=VALUE lines, blank lines and # comments
// ignored, an optional leading "export ", values optionally in single or
// double quotes. A malformed line is an error naming its line number.
func ParseFile(data []byte) (map[string]string, error) {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, val, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" || strings.ContainsAny(k, " \t\"'") {
			return nil, fmt.Errorf("line %d: want KEY=VALUE", n)
		}
		val = strings.TrimSpace(val)
		if len(val) >= 2 && (val[0] == '"' || val[0] == '\'') {
			q := val[0]
			end := strings.LastIndexByte(val, q)
			if end == 0 {
				return nil, fmt.Errorf("line %d: %s: unterminated quote", n, k)
			}
			if rest := strings.TrimSpace(val[end+1:]); rest != "" && !strings.HasPrefix(rest, "#") {
				return nil, fmt.Errorf("line %d: %s: text after the closing quote", n, k)
			}
			inner := val[1:end]
			if q == '"' {
				if s, err := strconv.Unquote(`"` + inner + `"`); err == nil {
					inner = s
				}
			}
			val = inner
		} else if i := strings.Index(val, " #"); i >= 0 {
			val = strings.TrimSpace(val[:i])
		}
		out[k] = val
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read env file: %w", err)
	}
	return out, nil
}

// File reads a .env file into a Lookup.
func File(path string) (Lookup, error) {
	m, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Map(m), nil
}

// ReadFile reads a .env file into a map (ParseFile).
func ReadFile(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("env file: %w", err)
	}
	m, err := ParseFile(data)
	if err != nil {
		return nil, fmt.Errorf("env file %s: %w", path, err)
	}
	return m, nil
}

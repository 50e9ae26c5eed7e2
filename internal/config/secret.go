package config

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strconv"
)

// redacted is what every printed form of a non-empty Secret shows.
const redacted = "**redacted**"

// Secret holds a credential (password, secret key, API key, private key).
//
// Every way of printing it shows "**redacted**" instead of the value: String,
// GoString, fmt verbs (%v %+v %#v %s %q and any other), JSON and text
// marshalling (so encoding/json and yaml.v3 output) and slog. An empty Secret
// prints as empty, so "not configured" stays visible. Only Reveal returns the
// value; call it at the point where the credential is handed to a client, and
// never put the result into logs, errors or workflow inputs.
type Secret string

// Reveal returns the secret value itself.
func (s Secret) Reveal() string { return string(s) }

// String returns "**redacted**", or "" for an empty Secret.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString returns the quoted redacted form, e.g. "\"**redacted**\"".
func (s Secret) GoString() string { return strconv.Quote(s.String()) }

// Format implements fmt.Formatter so that no verb or flag can reach the value:
// %q and %#v print the quoted redacted form, every other verb the bare one
// (width and precision flags are honoured on that form).
func (s Secret) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'q', verb == 'v' && f.Flag('#'):
		_, _ = io.WriteString(f, s.GoString())
	default:
		_, _ = fmt.Fprintf(f, fmt.FormatString(f, 's'), s.String())
	}
}

// MarshalJSON encodes the redacted form as a JSON string.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalText returns the redacted form; encoders that use
// encoding.TextMarshaler (yaml.v3, map keys in encoding/json) redact too.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// LogValue makes slog log the redacted form.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

var (
	_ fmt.Stringer   = Secret("")
	_ fmt.GoStringer = Secret("")
	_ fmt.Formatter  = Secret("")
	_ json.Marshaler = Secret("")
	_ slog.LogValuer = Secret("")
)

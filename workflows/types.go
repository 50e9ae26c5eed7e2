package workflows

import (
	"encoding/json"
	"fmt"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"

	"github.com/kohakku/drflow/activities"
)

// TaskQueue is the shared task queue every drflow worker polls unless configured otherwise.
const TaskQueue = "drflow"

// ErrInvalidInput is the application error type of input that can never succeed: the
// workflow fails at once, without retries, with a message naming the field and the fix.
const ErrInvalidInput = "InvalidInput"

// Search attributes set by runbooks, so runs can be found in the Web UI and with
// `temporal workflow list --query`. SearchAttributeTypes is what a server must register.
var (
	SearchAttrRunbook = temporal.NewSearchAttributeKeyKeyword("DrRunbook")
	SearchAttrTarget  = temporal.NewSearchAttributeKeyKeyword("DrTarget")
	SearchAttrDrill   = temporal.NewSearchAttributeKeyBool("DrDrill")

	SearchAttributeTypes = map[string]enumspb.IndexedValueType{
		"DrRunbook": enumspb.INDEXED_VALUE_TYPE_KEYWORD,
		"DrTarget":  enumspb.INDEXED_VALUE_TYPE_KEYWORD,
		"DrDrill":   enumspb.INDEXED_VALUE_TYPE_BOOL,
	}
)

// Duration is a time.Duration that reads and writes JSON as a Go duration string
// ("90s", "2h"). A bare number is rejected: it is ambiguous between seconds and nanoseconds.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string such as "90s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"90s\" or \"2h\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration string such as \"90s\" or \"2h\", got %q", s)
	}
	*d = Duration(v)
	return nil
}

// invalidInput returns the non-retryable error for a bad input field.
func invalidInput(field, format string, args ...any) error {
	msg := fmt.Sprintf("input field %q: %s", field, fmt.Sprintf(format, args...))
	return temporal.NewNonRetryableApplicationError(msg, ErrInvalidInput, nil)
}

// checkSetID accepts "" (the default set) or a set id such as 2026-11-21T02-00-00Z.
func checkSetID(id string) error {
	if id == "" {
		return nil
	}
	if _, err := activities.ParseSetID(id); err != nil {
		return invalidInput("setId", "%v", err)
	}
	return nil
}

// checkScope defaults an object restore scope to "needed" and refuses anything but
// "needed" and "all".
func checkScope(scope *string) error {
	switch *scope {
	case "":
		*scope = ScopeNeeded
	case ScopeNeeded, ScopeAll:
	default:
		return invalidInput("scope", "%q is not a scope: use %q (what the application needs) or %q (every object)", *scope, ScopeNeeded, ScopeAll)
	}
	return nil
}

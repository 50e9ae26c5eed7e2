package main

import (
	"log/slog"

	sdklog "go.temporal.io/sdk/log"
)

// quietLogger keeps the SDK's own chatter off an operator's terminal; errors reach the
// operator as returned errors instead.
func quietLogger() sdklog.Logger {
	return sdklog.NewStructuredLogger(slog.New(slog.DiscardHandler))
}

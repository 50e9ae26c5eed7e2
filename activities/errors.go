package activities

import "go.temporal.io/sdk/temporal"

func temporalNonRetryable(msg, errType string, cause error) error {
	return temporal.NewNonRetryableApplicationError(msg, errType, cause)
}

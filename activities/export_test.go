package activities

import "context"

// WithRestoreIdentity gives every RestoreDatabase run under ctx the identity
// id, so that a second call plays a retry of the first.
func WithRestoreIdentity(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, restoreIdentityKey{}, id)
}

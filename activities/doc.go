// Package activities holds drflow's side effects: one struct per external system, built
// once by the worker with its clients; the struct's methods are the activities.
//
// Errors are classified here, once: input or data that can never work becomes a
// non-retryable application error with an exported type constant; anything else is
// returned wrapped with the step that failed and left to the workflow's retry policy.
// Long activities heartbeat their progress and resume from it on the next attempt, so
// every per-item side effect is idempotent.
package activities

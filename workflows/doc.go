// Package workflows holds drflow's runbooks as deterministic Temporal workflows: the
// workflow functions, their input and result types, and the names of their queries,
// updates and search attributes.
//
// Nothing here touches the network, files, clocks or randomness directly: every side effect
// is an activity from package activities, called through a nil pointer of its struct type.
// Inputs are JSON with lowerCamelCase fields, so `temporal workflow start --input '{…}'`
// works; durations are Go duration strings ("90s", "2h").
package workflows

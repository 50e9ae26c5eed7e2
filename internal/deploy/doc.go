// Package deploy holds no code: its tests keep the deployment files at the root of the
// repository (docker-compose.temporal.yml, Dockerfile, .dockerignore) correct without a
// Docker engine. They parse the compose file with compose-go, the loader `docker compose`
// itself uses, and check what a broken deployment would get wrong: missing services,
// floating image tags, unpublished ports, state outside named volumes, missing
// healthchecks and dependencies, worker variables drflow does not read, hardcoded secrets,
// a short namespace retention, and unregistered search attributes.
package deploy

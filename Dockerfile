# syntax=docker/dockerfile:1
#
# drflow worker and starter. Used by docker-compose.temporal.yml (`command: worker`);
# `docker run IMAGE starter …` runs the operator CLI from the same image.

# ---------------------------------------------------------------------------- build
FROM golang:1.26 AS build

# go.mod asks for go 1.26.10; GOTOOLCHAIN=auto fetches it if the base image is older.
ENV GOTOOLCHAIN=auto

WORKDIR /src

# Modules first, so a source change does not re-download them.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download

COPY . .
# Static binaries (CGO_ENABLED=0): the runtime image needs neither a Go toolchain nor libc.
# .git is not in the build context (.dockerignore), hence -buildvcs=false.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags="-s -w" -o /out/worker ./worker && \
    CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags="-s -w" -o /out/starter ./starter

# -------------------------------------------------------------------------- runtime
FROM debian:bookworm-slim

# postgresql-client-15: pg_dump / pg_restore for the app's PostgreSQL 15. pg_dump must be at
# least the server's major version; when the app moves to 16+, install that client from the
# PGDG apt repository instead of Debian's.
# redis-tools: redis-cli, redis-check-aof, redis-check-rdb.
# curl: the compose healthcheck on /healthz.
RUN apt-get update && \
    apt-get install -y --no-install-recommends \
        ca-certificates \
        curl \
        postgresql-client-15 \
        redis-tools \
        tzdata && \
    rm -rf /var/lib/apt/lists/*

# Non-root. /var/lib/drflow is the scratch directory (compose mounts a volume there; a new
# named volume inherits this ownership).
RUN groupadd --system --gid 10001 drflow && \
    useradd --system --uid 10001 --gid drflow --home-dir /var/lib/drflow --shell /usr/sbin/nologin drflow && \
    install -d -o drflow -g drflow -m 0750 /var/lib/drflow /var/lib/drflow/tmp

COPY --from=build /out/worker /out/starter /usr/local/bin/

ENV TMPDIR=/var/lib/drflow/tmp
WORKDIR /var/lib/drflow
USER 10001:10001

EXPOSE 9090

# No ENTRYPOINT: the command names the binary, found on PATH in /usr/local/bin, so compose's
# `command: worker` runs /usr/local/bin/worker and `starter …` runs the CLI.
CMD ["worker"]

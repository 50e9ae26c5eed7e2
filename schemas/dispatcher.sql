-- Database kohakku-dispatcher: agent containers and which task each was given.
--
-- Idempotent: every statement is IF NOT EXISTS. No data, no transaction control.
-- task_id refers to kohakku-controller.tasks_task(id), a different database, so
-- it cannot be a foreign key; recovery joins the two in Go.
--
-- Names used from Go are defined once in schemas/schemas.go.

CREATE TABLE IF NOT EXISTS agent_containers (
    container_id      text        PRIMARY KEY,
    host              text        NOT NULL,
    -- Registration number handed out by the dispatcher, increasing over time; a
    -- container that re-registers gets a new one, so a stale agent's heartbeats
    -- and results can be fenced off by comparing generations.
    generation        bigint      NOT NULL
        CONSTRAINT agent_containers_generation_check CHECK (generation > 0),
    status            text        NOT NULL DEFAULT 'live'
        CONSTRAINT agent_containers_status_check CHECK (status IN ('live', 'dead')),
    started_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Live containers whose heartbeat is older than the agent timeout: the
-- candidates for "clean up timed-out agents".
CREATE INDEX IF NOT EXISTS agent_containers_status_heartbeat_idx
    ON agent_containers (status, last_heartbeat_at);

-- One row per dispatch of a task (attempt 1, 2, …). released_at is set when the
-- container gives the task back: finished, failed, cancelled or lost.
CREATE TABLE IF NOT EXISTS dispatch_assignments (
    task_id      bigint      NOT NULL,
    container_id text        NOT NULL REFERENCES agent_containers (container_id),
    attempt      integer     NOT NULL
        CONSTRAINT dispatch_assignments_attempt_check CHECK (attempt >= 1),
    assigned_at  timestamptz NOT NULL DEFAULT now(),
    released_at  timestamptz NULL,
    CONSTRAINT dispatch_assignments_task_attempt_key UNIQUE (task_id, attempt),
    CONSTRAINT dispatch_assignments_released_check CHECK (released_at IS NULL OR released_at >= assigned_at)
);

-- At most one open assignment per task: re-dispatching is idempotent
-- (INSERT … ON CONFLICT DO NOTHING) and a task is never held by two agents.
CREATE UNIQUE INDEX IF NOT EXISTS dispatch_assignments_open_task_idx
    ON dispatch_assignments (task_id)
    WHERE released_at IS NULL;

-- Open assignments by container: what a lost container was holding.
CREATE INDEX IF NOT EXISTS dispatch_assignments_open_container_idx
    ON dispatch_assignments (container_id)
    WHERE released_at IS NULL;

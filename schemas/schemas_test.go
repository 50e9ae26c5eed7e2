package schemas_test

import (
	"context"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/schemas"
)

// TestSQLAgainstPostgres applies both schema files twice to a private
// PostgreSQL (they must be idempotent) and checks the constraints and names Go
// relies on.
func TestSQLAgainstPostgres(t *testing.T) {
	pg := stacktest.Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	connect := func(t *testing.T, db, sql string) *pgx.Conn {
		t.Helper()
		require.NoError(t, pg.CreateDatabase(ctx, db))
		conn, err := pgx.Connect(ctx, pg.URL(db))
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close(context.Background()) })
		for i := range 2 {
			_, err := conn.Exec(ctx, sql)
			require.NoError(t, err, "apply %s schema, round %d", db, i+1)
		}
		return conn
	}
	ctl := connect(t, schemas.ControllerDB, schemas.ControllerSQL)
	dsp := connect(t, schemas.DispatcherDB, schemas.DispatcherSQL)

	t.Run("tables exist", func(t *testing.T) {
		for _, c := range []struct {
			conn  *pgx.Conn
			table string
		}{
			{ctl, schemas.TasksTable}, {ctl, schemas.BriefsTable},
			{dsp, schemas.AgentContainersTable}, {dsp, schemas.DispatchAssignmentsTable},
		} {
			var found *string
			require.NoError(t, c.conn.QueryRow(ctx, "SELECT to_regclass($1)::text", c.table).Scan(&found))
			assert.NotNil(t, found, "table %s", c.table)
		}
	})

	// Every case runs in a transaction that is rolled back, so cases do not
	// see each other's rows.
	inTx := func(t *testing.T, conn *pgx.Conn, f func(tx pgx.Tx) error) error {
		t.Helper()
		tx, err := conn.Begin(ctx)
		require.NoError(t, err)
		defer tx.Rollback(ctx)
		return f(tx)
	}
	insertTask := func(status string, progress int) func(tx pgx.Tx) error {
		return func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO tasks_task (status, brief_key, progress) VALUES ($1, 'briefs/x/brief.json', $2)`, status, progress)
			return err
		}
	}
	wantCheckViolation := func(t *testing.T, err error, constraint string) {
		t.Helper()
		var pgErr *pgconn.PgError
		require.True(t, errors.As(err, &pgErr), "want a PostgreSQL error, got %v", err)
		assert.Equal(t, "23514", pgErr.Code, "check_violation") // check_violation
		assert.Equal(t, constraint, pgErr.ConstraintName)
	}

	t.Run("every Go task status is accepted", func(t *testing.T) {
		for _, st := range schemas.TaskStatuses {
			assert.NoError(t, inTx(t, ctl, insertTask(st, 0)), "status %s", st)
		}
	})
	t.Run("unknown task status is rejected", func(t *testing.T) {
		for _, st := range []string{"bogus", "Pending", "", "done"} {
			wantCheckViolation(t, inTx(t, ctl, insertTask(st, 0)), "tasks_task_status_check")
		}
	})
	t.Run("SQL status list equals Go's", func(t *testing.T) {
		var def string
		require.NoError(t, ctl.QueryRow(ctx,
			`SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'tasks_task_status_check'`).Scan(&def))
		var inSQL []string
		for _, part := range strings.Split(def, "'")[1:] {
			if part != "" && !strings.ContainsAny(part, " ():,[]") {
				inSQL = append(inSQL, part)
			}
		}
		assert.ElementsMatch(t, schemas.TaskStatuses, inSQL, "constraint %s", def)
	})
	t.Run("progress out of range is rejected", func(t *testing.T) {
		wantCheckViolation(t, inTx(t, ctl, insertTask(schemas.StatusRunning, 101)), "tasks_task_progress_check")
		wantCheckViolation(t, inTx(t, ctl, insertTask(schemas.StatusRunning, -1)), "tasks_task_progress_check")
	})
	t.Run("container status", func(t *testing.T) {
		insert := func(status string) func(tx pgx.Tx) error {
			return func(tx pgx.Tx) error {
				_, err := tx.Exec(ctx, `INSERT INTO agent_containers (container_id, host, generation, status) VALUES ('c1', 'h1', 1, $1)`, status)
				return err
			}
		}
		assert.NoError(t, inTx(t, dsp, insert(schemas.ContainerLive)))
		assert.NoError(t, inTx(t, dsp, insert(schemas.ContainerDead)))
		wantCheckViolation(t, inTx(t, dsp, insert("zombie")), "agent_containers_status_check")
	})
	t.Run("one open assignment per task, unique attempts", func(t *testing.T) {
		err := inTx(t, dsp, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO agent_containers (container_id, host, generation) VALUES ('c1', 'h1', 1)`)
			require.NoError(t, err)
			_, err = tx.Exec(ctx, `INSERT INTO dispatch_assignments (task_id, container_id, attempt) VALUES (7, 'c1', 1)`)
			require.NoError(t, err)
			_, err = tx.Exec(ctx, `SAVEPOINT s`)
			require.NoError(t, err)
			_, err = tx.Exec(ctx, `INSERT INTO dispatch_assignments (task_id, container_id, attempt) VALUES (7, 'c1', 2)`)
			var pgErr *pgconn.PgError
			require.True(t, errors.As(err, &pgErr), "second open assignment: %v", err)
			assert.Equal(t, "dispatch_assignments_open_task_idx", pgErr.ConstraintName)
			_, err = tx.Exec(ctx, `ROLLBACK TO SAVEPOINT s`)
			require.NoError(t, err)
			_, err = tx.Exec(ctx, `UPDATE dispatch_assignments SET released_at = now() WHERE task_id = 7`)
			require.NoError(t, err)
			_, err = tx.Exec(ctx, `INSERT INTO dispatch_assignments (task_id, container_id, attempt) VALUES (7, 'c1', 2)`)
			require.NoError(t, err, "re-dispatch after release")
			_, err = tx.Exec(ctx, `SAVEPOINT s`)
			require.NoError(t, err)
			_, err = tx.Exec(ctx, `INSERT INTO dispatch_assignments (task_id, container_id, attempt, released_at) VALUES (7, 'c1', 2, now())`)
			require.True(t, errors.As(err, &pgErr), "duplicate attempt: %v", err)
			assert.Equal(t, "dispatch_assignments_task_attempt_key", pgErr.ConstraintName)
			_, err = tx.Exec(ctx, `ROLLBACK TO SAVEPOINT s`)
			return err
		})
		require.NoError(t, err)
	})
	t.Run("pending in dispatch order", func(t *testing.T) {
		err := inTx(t, ctl, func(tx pgx.Tx) error {
			base := time.Date(2026, 11, 21, 2, 0, 0, 0, time.UTC)
			// id, priority, created_at offset in seconds, status
			for _, r := range []struct {
				id, prio, at int
				status       string
			}{
				{1, 0, 0, schemas.StatusPending},
				{2, 10, 5, schemas.StatusPending},
				{3, 0, 0, schemas.StatusPending}, // same time as 1: id breaks the tie
				{4, 10, 1, schemas.StatusPending},
				{5, 99, 0, schemas.StatusRunning}, // not pending
				{6, 0, -1, schemas.StatusPending},
			} {
				_, err := tx.Exec(ctx, `INSERT INTO tasks_task (id, status, brief_key, priority, created_at) VALUES ($1, $2, $3, $4, $5)`,
					r.id, r.status, schemas.BriefKey(int64(r.id)), r.prio, base.Add(time.Duration(r.at)*time.Second))
				require.NoError(t, err)
			}
			rows, err := tx.Query(ctx, schemas.PendingInDispatchOrderSQL)
			require.NoError(t, err)
			ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
			require.NoError(t, err)
			assert.Equal(t, []int64{4, 2, 6, 1, 3}, ids)
			return nil
		})
		require.NoError(t, err)
	})
}

func TestObjectKeys(t *testing.T) {
	assert.Equal(t, "briefs/42/brief.json", schemas.BriefKey(42))
	id, err := schemas.ParseBriefKey("briefs/42/brief.json")
	require.NoError(t, err)
	assert.Equal(t, int64(42), id)
	for _, bad := range []string{"briefs/42/other.json", "skills/42/brief.json", "briefs/x/brief.json", "briefs/042/brief.json", "briefs/-1/brief.json", "briefs//brief.json"} {
		_, err := schemas.ParseBriefKey(bad)
		assert.Error(t, err, bad)
	}
	assert.Equal(t, "skills/go-test/SKILL.md", schemas.SkillKey("go-test", schemas.SkillFileName))
	name, ok := schemas.SkillName("skills/go-test/scripts/run.sh")
	assert.True(t, ok)
	assert.Equal(t, "go-test", name)
	for _, bad := range []string{"skills/", "skills/x", "skills//SKILL.md", "briefs/1/brief.json"} {
		_, ok := schemas.SkillName(bad)
		assert.False(t, ok, bad)
	}
}

func TestRedisKeys(t *testing.T) {
	assert.Equal(t, "kohakku:task:42", schemas.TaskKey(42))
	id, err := schemas.ParseTaskKey(schemas.TaskKey(42))
	require.NoError(t, err)
	assert.Equal(t, int64(42), id)
	for _, bad := range []string{"kohakku:task:", "kohakku:task:x", "kohakku:task:07", "kohakku:queue:pending"} {
		_, err := schemas.ParseTaskKey(bad)
		assert.Error(t, err, bad)
	}
	for _, k := range []string{schemas.PendingQueueKey, schemas.TaskKey(1), schemas.LiveContainersKey} {
		assert.True(t, strings.HasPrefix(k, schemas.KeyPrefix), k)
	}
}

func TestStatusHelpers(t *testing.T) {
	for _, st := range schemas.TaskStatuses {
		assert.True(t, schemas.ValidTaskStatus(st))
		// Every status is exactly one of: pending, in flight, terminal.
		n := 0
		for _, b := range []bool{st == schemas.StatusPending, schemas.IsInFlight(st), schemas.IsTerminal(st)} {
			if b {
				n++
			}
		}
		assert.Equal(t, 1, n, st)
	}
	assert.False(t, schemas.ValidTaskStatus("bogus"))
}

// TestRedisDocCoversGo checks that every exported name declared in redis.go —
// the Redis key helpers — appears in redis.md, and so does the value of every
// string constant among them.
func TestRedisDocCoversGo(t *testing.T) {
	doc, err := os.ReadFile("redis.md")
	require.NoError(t, err)
	require.Equal(t, string(doc), schemas.RedisLayout, "embedded copy")

	fset := token.NewFileSet()
	var redisFile *ast.File
	consts := map[string]ast.Expr{} // every package-level constant of the package
	paths, err := filepath.Glob("*.go")
	require.NoError(t, err)
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		require.NoError(t, err)
		if p == "redis.go" {
			redisFile = f
		}
		for _, decl := range f.Decls {
			if d, ok := decl.(*ast.GenDecl); ok && d.Tok == token.CONST {
				for _, spec := range d.Specs {
					s := spec.(*ast.ValueSpec)
					for i, n := range s.Names {
						if i < len(s.Values) {
							consts[n.Name] = s.Values[i]
						}
					}
				}
			}
		}
	}
	require.NotNil(t, redisFile)
	// stringConst evaluates the string constants of this package: literals
	// and + of literals and other such constants.
	var stringConst func(e ast.Expr) (string, bool)
	stringConst = func(e ast.Expr) (string, bool) {
		switch e := e.(type) {
		case *ast.BasicLit:
			if e.Kind != token.STRING {
				return "", false
			}
			s, err := strconv.Unquote(e.Value)
			return s, err == nil
		case *ast.Ident:
			if v, ok := consts[e.Name]; ok {
				return stringConst(v)
			}
		case *ast.ParenExpr:
			return stringConst(e.X)
		case *ast.BinaryExpr:
			if e.Op == token.ADD {
				a, ok1 := stringConst(e.X)
				b, ok2 := stringConst(e.Y)
				return a + b, ok1 && ok2
			}
		}
		return "", false
	}

	var names []string
	for _, decl := range redisFile.Decls {
		switch d := decl.(type) {
		case *ast.FuncDecl:
			if d.Recv == nil && d.Name.IsExported() {
				names = append(names, d.Name.Name)
			}
		case *ast.GenDecl:
			for _, spec := range d.Specs {
				switch s := spec.(type) {
				case *ast.ValueSpec:
					for _, n := range s.Names {
						if n.IsExported() {
							names = append(names, n.Name)
						}
					}
				case *ast.TypeSpec:
					if s.Name.IsExported() {
						names = append(names, s.Name.Name)
					}
				}
			}
		}
	}
	require.NotEmpty(t, names)
	for _, want := range []string{"PendingQueueKey", "TaskKey", "LiveContainersKey"} {
		require.True(t, slices.Contains(names, want), "redis.go declares %s", want)
	}
	// Quoted as code: `Name` or `Name(…)`, `value` or `value…`.
	for _, name := range names {
		assert.True(t, strings.Contains(string(doc), "`"+name), "redis.md does not name %s", name)
		if expr, ok := consts[name]; ok {
			v, ok := stringConst(expr)
			if !ok {
				continue // not a string constant
			}
			assert.True(t, strings.Contains(string(doc), "`"+v), "redis.md does not show %s = %q", name, v)
		}
	}
	assert.True(t, strings.Contains(string(doc), "`kohakku:task:<id>`"), "redis.md does not show TaskKey's form")
}

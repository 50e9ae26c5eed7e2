package activities

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/kohakku/drflow/internal/scratch"
	"github.com/kohakku/drflow/internal/store"
)

// Error types of the table restore activities (PlanTableRestore,
// RestoreTablesSide, ReplaceTables, CompareTables). A table that does not exist
// live is ErrTableNotFound.
const (
	// ErrTableNotInSet: the set's dump of the database holds no such table, or
	// its definition without its data.
	ErrTableNotInSet = "TableNotInSet"
	// ErrSchemaMismatch: the live table's columns differ from the set's (names,
	// types or generated columns), so its rows cannot be replaced data only.
	ErrSchemaMismatch = "SchemaMismatch"
	// ErrForeignKeyConflict: replacing the tables would break a foreign key:
	// live rows reference rows the set does not have, or the set's rows
	// reference rows that do not exist live.
	ErrForeignKeyConflict = "ForeignKeyConflict"
)

// SideSchemaPrefix starts the name of every side schema RestoreTablesSide
// creates next to the live tables; it refuses any other name. Side schemas are
// never dropped by drflow: the operator compares, copies rows back and drops
// them (TablesSideResult.Drop).
const SideSchemaPrefix = "drflow_restore_"

// defaultReplaceLockTimeout bounds ReplaceTables' wait for its table locks when
// Postgres.LockWaitTimeout is 0: a waiting lock request queues every later
// writer of the table behind it, so it must not wait long.
const defaultReplaceLockTimeout = 30 * time.Second

// SafetyTablesKey names the safety copy (pg_dump -t of the live tables) a
// RestoreTables run takes before it replaces tables of db.
func SafetyTablesKey(workflowID, db string) string {
	return SafetyKeyPrefix(workflowID) + "postgres/" + db + ".tables.dump.zst"
}

// QualifyTable returns name as "schema.table": "table" means "public.table".
// Names are as stored, not quoted; the schema is the part before the first dot.
func QualifyTable(name string) (string, error) {
	t, err := parseTableName(name)
	if err != nil {
		return "", err
	}
	return t.String(), nil
}

// tableName is a validated, schema-qualified table name.
type tableName struct{ schema, rel string }

func (t tableName) String() string { return t.schema + "." + t.rel }

// ident is the quoted, qualified name for SQL.
func (t tableName) ident() string { return pgx.Identifier{t.schema, t.rel}.Sanitize() }

func parseTableName(name string) (tableName, error) {
	id, err := tableIdent(name)
	if err != nil {
		return tableName{}, err
	}
	t := tableName{schema: "public", rel: id[0]}
	if len(id) == 2 {
		t = tableName{schema: id[0], rel: id[1]}
	}
	if len(t.schema) > 63 || len(t.rel) > 63 {
		return tableName{}, fmt.Errorf("table name %q: a part is longer than 63 bytes, which PostgreSQL would truncate", name)
	}
	return t, nil
}

// PlanTableRestoreInput names the tables of one database to restore from a set.
type PlanTableRestoreInput struct {
	// SetID is the backup set, for logs and messages.
	SetID string `json:"setId"`
	// Artifact is the set manifest's dump of Database.
	Artifact Artifact `json:"artifact"`
	// Database is the live database the tables are restored next to or over.
	Database string `json:"database"`
	// Tables are "table" (schema public) or "schema.table", as stored.
	Tables []string `json:"tables"`
	// Scratch is the scratch database the set's tables are restored into to be
	// read (it must start with ScratchPrefix); dropped before the activity
	// returns.
	Scratch string `json:"scratch"`
}

// TableColumn is one column of a table: its name, its type as format_type
// writes it with an empty search_path (schema-qualified unless built in) and
// whether it is a generated column.
type TableColumn struct {
	// Name of the column, as stored.
	Name string `json:"name"`
	// Type as format_type writes it: "bigint", "public.mood".
	Type string `json:"type"`
	// Generated: a generated (computed, stored) column.
	Generated bool `json:"generated,omitempty"`
}

// TablePlan is what a table restore would do to one table.
type TablePlan struct {
	// Table is "schema.table".
	Table string `json:"table"`
	// LiveRows now; SetRows in the set's dump.
	LiveRows int64 `json:"liveRows"`
	SetRows  int64 `json:"setRows"`
	// PrimaryKey columns of the live table; empty when it has none.
	PrimaryKey []string `json:"primaryKey,omitempty"`
	// Method says how replace writes the table: merged by primary key (delete
	// the rows the set lacks, update the rows that differ, insert the missing
	// ones, so referencing rows never see their row disappear) or, without a
	// primary key, delete every row and insert the set's.
	Method string `json:"method"`
	// ColumnsMatch: the live columns equal the set's (names, types, generated).
	ColumnsMatch bool `json:"columnsMatch"`
	// ColumnDiffs name each column that differs.
	ColumnDiffs []string `json:"columnDiffs,omitempty"`
	// Sequences owned by the table's columns; replace moves each past the
	// largest restored value.
	Sequences []string `json:"sequences,omitempty"`
}

// ForeignKeyCheck is one foreign key touching a restored table and what
// replacing the tables would do to it.
type ForeignKeyCheck struct {
	// Constraint name, on Table ("schema.table", the referencing table).
	Constraint string   `json:"constraint"`
	Table      string   `json:"table"`
	Columns    []string `json:"columns"`
	// References is the referenced table and RefColumns its columns.
	References string   `json:"references"`
	RefColumns []string `json:"refColumns"`
	// OnDelete is the constraint's delete action ("no action", "cascade" …).
	OnDelete string `json:"onDelete"`
	// Rows says whose rows were checked against whose: "live → set" (live
	// referencing rows against the set's referenced rows), "set → live" or
	// "set → set".
	Rows string `json:"rows"`
	// Violations is how many referencing rows would be left without their
	// referenced row after the replace; -1 when it could not be checked.
	Violations int64 `json:"violations"`
	// Problem says what breaks (Violations > 0) or why it was not checked.
	Problem string `json:"problem,omitempty"`
}

// TablesPlan is what PlanTableRestore found: per table the live and the set's
// rows and columns, and every foreign key that a replace would have to keep.
// It changes nothing live.
type TablesPlan struct {
	// Database is the live database.
	Database string `json:"database"`
	// Key is the set's dump the tables come from.
	Key    string      `json:"key"`
	Tables []TablePlan `json:"tables"`
	// ForeignKeys touching the tables, with what a replace would do to them.
	ForeignKeys []ForeignKeyCheck `json:"foreignKeys,omitempty"`
	// Mismatches and Conflicts are why a replace would be refused
	// (ErrSchemaMismatch, ErrForeignKeyConflict), each naming the table, the
	// reason and the fix. A side copy is made regardless.
	Mismatches []string `json:"mismatches,omitempty"`
	Conflicts  []string `json:"conflicts,omitempty"`
	// Download is the time to fetch and check the dump; Restore the time to
	// restore the tables into the scratch database and read them.
	Download time.Duration `json:"download"`
	Restore  time.Duration `json:"restore"`
}

// RestoreTablesSideInput names the tables to restore into a side schema.
type RestoreTablesSideInput struct {
	// SetID, Artifact, Database, Tables and Scratch as in PlanTableRestoreInput.
	SetID    string   `json:"setId"`
	Artifact Artifact `json:"artifact"`
	Database string   `json:"database"`
	Tables   []string `json:"tables"`
	Scratch  string   `json:"scratch"`
	// SideSchema is the schema created in Database for the copies; it must
	// start with SideSchemaPrefix.
	SideSchema string `json:"sideSchema"`
}

// SideTable is one side copy.
type SideTable struct {
	// Table is the live table ("schema.table"); Side its copy
	// ("drflow_restore_….table").
	Table string `json:"table"`
	Side  string `json:"side"`
	// Rows copied: the set's rows of Table.
	Rows int64 `json:"rows"`
}

// TablesSideResult is what RestoreTablesSide made.
type TablesSideResult struct {
	// Database holds SideSchema, next to the live tables.
	Database   string `json:"database"`
	SideSchema string `json:"sideSchema"`
	// Tables are the side copies, in input order.
	Tables []SideTable `json:"tables"`
	// Drop is the statement that removes the side copies once they are no
	// longer needed; drflow never runs it.
	Drop string `json:"drop"`
	// Download, Restore (into the scratch database) and Copy (into the side
	// schema) times.
	Download time.Duration `json:"download"`
	Restore  time.Duration `json:"restore"`
	Copy     time.Duration `json:"copy"`
}

// ReplaceTablesInput names the live tables to replace with their side copies.
type ReplaceTablesInput struct {
	// Database holding both the tables and SideSchema.
	Database string `json:"database"`
	// Tables as in PlanTableRestoreInput; each has its copy in SideSchema.
	Tables     []string `json:"tables"`
	SideSchema string   `json:"sideSchema"`
}

// SequenceReset is one sequence ReplaceTables moved past the restored rows.
type SequenceReset struct {
	Sequence string `json:"sequence"`
	Column   string `json:"column"`
	// From and To are the sequence's last value before and after; equal when
	// it was already past every restored value (it never moves backwards).
	From int64 `json:"from"`
	To   int64 `json:"to"`
}

// TableReplace is what ReplaceTables did to one table.
type TableReplace struct {
	// Table is "schema.table".
	Table string `json:"table"`
	// Method as in TablePlan.
	Method string `json:"method"`
	// Before and After are the live rows before and after the replace.
	Before int64 `json:"before"`
	After  int64 `json:"after"`
	// Deleted, Updated and Inserted rows.
	Deleted   int64           `json:"deleted"`
	Updated   int64           `json:"updated"`
	Inserted  int64           `json:"inserted"`
	Sequences []SequenceReset `json:"sequences,omitempty"`
}

// ReplaceTablesResult is what ReplaceTables did.
type ReplaceTablesResult struct {
	// Database and SideSchema as in the input.
	Database   string `json:"database"`
	SideSchema string `json:"sideSchema"`
	// Tables in input order.
	Tables []TableReplace `json:"tables"`
	// Replace is the time of the transaction, Analyze of ANALYZE afterwards.
	Replace time.Duration `json:"replace"`
	Analyze time.Duration `json:"analyze"`
}

// CompareTablesInput names live tables and their side copies to compare.
type CompareTablesInput struct {
	// Database, Tables and SideSchema as in ReplaceTablesInput.
	Database   string   `json:"database"`
	Tables     []string `json:"tables"`
	SideSchema string   `json:"sideSchema"`
}

// TableComparison is how a live table differs from its side copy, row by row
// over the columns both have.
type TableComparison struct {
	// Table is "schema.table"; Side its copy.
	Table string `json:"table"`
	Side  string `json:"side"`
	// LiveRows and SideRows are the row counts.
	LiveRows int64 `json:"liveRows"`
	SideRows int64 `json:"sideRows"`
	// OnlyLive rows are live and not in the copy (changed or added since the
	// set); OnlySide rows are in the copy and not live (changed or lost).
	OnlyLive int64 `json:"onlyLive"`
	OnlySide int64 `json:"onlySide"`
	// Columns compared: those both have, generated ones left out.
	Columns []string `json:"columns"`
}

// CompareTablesResult is CompareTables' answer.
type CompareTablesResult struct {
	// Database and SideSchema as in the input.
	Database   string `json:"database"`
	SideSchema string `json:"sideSchema"`
	// Tables in input order.
	Tables []TableComparison `json:"tables"`
}

// TablesProgress is the heartbeat detail of the table activities, shown in
// the Web UI. None of them resumes: a retry starts over and does not read it.
type TablesProgress struct {
	// Phase is "download", "scratch", "plan", "copy", "replace", "analyze",
	// "compare", "drop" or "done".
	Phase string `json:"phase"`
	// Table being worked on, when one is.
	Table string `json:"table,omitempty"`
	// StoredBytes read from the store and RawBytes written to the temporary
	// file, while downloading.
	StoredBytes int64 `json:"storedBytes,omitempty"`
	RawBytes    int64 `json:"rawBytes,omitempty"`
}

// PlanTableRestore learns what a table restore would do, changing nothing
// live. It downloads the set's dump once (checked against the manifest like
// RestoreDatabase), finds each table's entries in its table of contents
// (`pg_restore --list`), and restores the set's tables into in.Scratch — the
// whole dump's pre-data section (types, functions, sequences, tables; no
// indexes, constraints or triggers, so the data loads alone) and then only the
// tables' data (`pg_restore --data-only --use-list`). There it counts the set's
// rows (checked against the manifest) and reads its columns, and compares them
// with the live table's. Foreign keys are read from the live catalog: every
// one from or to a restored table. Whether a replace would break one is
// computed, not guessed: the key columns of the set's tables are copied into
// temporary tables of the live session (gone when it ends) and the referencing
// rows without a referenced row are counted with NOT EXISTS. The scratch
// database is dropped on every path.
//
// A table whose columns differ, or a foreign key a replace would break, is a
// finding in the plan (Mismatches, Conflicts), not an error: a side copy works
// all the same. Errors (non-retryable): a table that does not exist live
// ErrTableNotFound naming the database's tables; one the set's dump lacks
// ErrTableNotInSet; bad input ErrInvalidInput; a dump that fails its checks
// ErrChecksumMismatch, ErrArchiveCorrupt or ErrRowCountMismatch; pg_restore
// failing on the server ErrRestoreFailed; ErrAuthFailed, ErrPermissionDenied,
// ErrStore, ErrInvalidConfig as for Dump. Infrastructure faults are retried.
func (p *Postgres) PlanTableRestore(ctx context.Context, in PlanTableRestoreInput) (TablesPlan, error) {
	j, err := p.newTableJob("plan table restore", in.SetID, in.Artifact, in.Database, in.Tables, in.Scratch, "")
	if err != nil {
		return TablesPlan{}, err
	}
	var plan TablesPlan
	err = j.run(ctx, func(ctx context.Context) error {
		var err error
		plan, err = j.plan(ctx)
		return err
	})
	if err != nil {
		return TablesPlan{}, j.classify(err)
	}
	activity.GetLogger(ctx).Info("table restore planned", "set", in.SetID, "db", in.Database, "key", in.Artifact.Key,
		"tables", in.Tables, "mismatches", len(plan.Mismatches), "conflicts", len(plan.Conflicts))
	return plan, nil
}

// RestoreTablesSide restores the set's version of in.Tables into the side
// schema in.SideSchema of the live database, next to the live tables, which it
// does not touch. pg_restore cannot rename a schema, and rewriting its SQL
// output is fragile, so the tables go through a scratch database: the dump is
// downloaded and checked, restored into in.Scratch as PlanTableRestore does,
// and each table is streamed from there into the side schema with COPY (text
// format, which every type has) — one table per side copy, named like the live
// table, with the set's columns and types and no constraints, indexes,
// defaults or triggers: a copy to read and compare, and the source ReplaceTables
// reads. The side schema and its tables are made in one transaction; the
// scratch database is dropped on every path.
//
// Idempotent: a retry (or a rerun with the same names) drops the side copies it
// made before and makes them again, so the copies always hold exactly the
// set's rows. Side copies are never dropped by drflow: the result's Drop says
// how. It needs CREATEDB (scratch) and CREATE on the live database (schema).
// Errors as for PlanTableRestore.
func (p *Postgres) RestoreTablesSide(ctx context.Context, in RestoreTablesSideInput) (TablesSideResult, error) {
	j, err := p.newTableJob("restore tables side by side", in.SetID, in.Artifact, in.Database, in.Tables, in.Scratch, in.SideSchema)
	if err != nil {
		return TablesSideResult{}, err
	}
	var res TablesSideResult
	err = j.run(ctx, func(ctx context.Context) error {
		var err error
		res, err = j.restoreSide(ctx)
		return err
	})
	if err != nil {
		return TablesSideResult{}, j.classify(err)
	}
	activity.GetLogger(ctx).Info("tables restored side by side", "set", in.SetID, "db", in.Database, "key", in.Artifact.Key,
		"schema", res.SideSchema, "tables", res.Tables, "download", res.Download, "restore", res.Restore, "copy", res.Copy)
	return res, nil
}

// ReplaceTables replaces the rows of the live in.Tables with their side copies
// in in.SideSchema (made by RestoreTablesSide), data only, in one transaction:
// it locks the tables (EXCLUSIVE: readers go on, writers wait; the wait for the
// locks is bounded by Postgres.LockWaitTimeout, 30s when 0, and retried),
// checks that each table's columns still equal its copy's (else
// ErrSchemaMismatch naming the columns) and that no foreign key would break
// (else ErrForeignKeyConflict naming the constraint, the referencing table and
// the rows), then writes parents before children. A table with a primary key is
// merged by it: rows the set lacks are deleted, rows that differ updated,
// missing rows inserted — so a referencing row whose referenced row is kept
// never sees it deleted (an ON DELETE CASCADE would otherwise empty the
// referencing table); a table without one is emptied and refilled, refused when
// another table references it. Sequences owned by the tables are moved past the
// largest restored value (never backwards: ids handed out since the set stay
// unused). Before the commit the live rows are compared with the copy's; a
// difference (a trigger rewriting rows) fails with nothing changed. After the
// commit each table is analyzed.
//
// Only the tables' own rows are read and written (ONLY, as pg_dump dumps them):
// rows of inheritance children are left alone.
//
// Nothing changes unless the transaction commits; cancelling ctx rolls it back.
// Idempotent: a retry after the commit finds the live rows equal to the copies
// and changes nothing (Before equals After). The side copies stay. Errors:
// ErrTableNotFound, ErrInvalidInput (no side copy), ErrSchemaMismatch,
// ErrForeignKeyConflict, ErrRestoreFailed (a constraint or trigger refused the
// rows), ErrAuthFailed, ErrPermissionDenied; a lock wait, a deadlock or a lost
// server is retried.
func (p *Postgres) ReplaceTables(ctx context.Context, in ReplaceTablesInput) (ReplaceTablesResult, error) {
	j, err := p.newTableJob("replace tables", "", Artifact{}, in.Database, in.Tables, "", in.SideSchema)
	if err != nil {
		return ReplaceTablesResult{}, err
	}
	var res ReplaceTablesResult
	err = j.run(ctx, func(ctx context.Context) error {
		var err error
		res, err = j.replace(ctx)
		return err
	})
	if err != nil {
		return ReplaceTablesResult{}, j.classify(err)
	}
	activity.GetLogger(ctx).Info("tables replaced", "db", in.Database, "schema", in.SideSchema,
		"tables", res.Tables, "replace", res.Replace, "analyze", res.Analyze)
	return res, nil
}

// CompareTables compares each live table with its side copy, row by row over
// the columns both have: how many rows only the live table has and how many
// only the copy has (as multisets of rows, so duplicates count). It changes
// nothing. After a side restore it says what the set would bring back; after a
// replace, that live equals the set. Errors as for ReplaceTables.
func (p *Postgres) CompareTables(ctx context.Context, in CompareTablesInput) (CompareTablesResult, error) {
	j, err := p.newTableJob("compare tables", "", Artifact{}, in.Database, in.Tables, "", in.SideSchema)
	if err != nil {
		return CompareTablesResult{}, err
	}
	var res CompareTablesResult
	err = j.run(ctx, func(ctx context.Context) error {
		var err error
		res, err = j.compare(ctx)
		return err
	})
	if err != nil {
		return CompareTablesResult{}, j.classify(err)
	}
	activity.GetLogger(ctx).Info("tables compared", "db", in.Database, "schema", in.SideSchema, "tables", res.Tables)
	return res, nil
}

// tableJob is one run of a table activity.
type tableJob struct {
	p        *Postgres
	what     string
	setID    string
	art      Artifact
	db       string
	tables   []tableName
	scratch  string
	side     string
	password string
	// dbURL, adminURL and scratchURL carry the password: never log them.
	dbURL, adminURL, scratchURL string

	phase       atomic.Value // string
	table       atomic.Value // string
	stored, raw atomic.Int64
	heartbeat   func()
}

// newTableJob checks the input: side and scratch are checked when not empty
// (each activity passes the ones it uses), the artifact when it has a key.
func (p *Postgres) newTableJob(what, setID string, art Artifact, db string, tables []string, scratch, side string) (*tableJob, error) {
	j := &tableJob{p: p, what: what, setID: setID, art: art, db: db, scratch: scratch, side: side}
	bad := func(field, format string, args ...any) error {
		return NonRetryable(ErrInvalidInput, fmt.Errorf("%s in %q: input field %q: %s", what, db, field, fmt.Sprintf(format, args...)))
	}
	switch {
	case db == "":
		return nil, bad("database", "empty: name the live database")
	case len(db) > 63, strings.ContainsRune(db, 0):
		return nil, bad("database", "%q is not a PostgreSQL database name", db)
	case slices.Contains(systemDatabases, db):
		return nil, bad("database", "%q is a system database: name the application database", db)
	case strings.HasPrefix(db, ScratchPrefix), strings.HasPrefix(db, RestoreStagingPrefix):
		return nil, bad("database", "%q is one of drflow's scratch or staging databases", db)
	case len(tables) == 0:
		return nil, bad("tables", "empty: name at least one table, e.g. [\"tasks_task\"]")
	}
	for _, name := range tables {
		t, err := parseTableName(name)
		if err != nil {
			return nil, bad("tables", "%v", err)
		}
		for _, o := range j.tables {
			if o == t {
				return nil, bad("tables", "%s is listed twice", t)
			}
			if o.rel == t.rel {
				return nil, bad("tables", "%s and %s have the same name, and their side copies would too: restore them in two runs", o, t)
			}
		}
		j.tables = append(j.tables, t)
	}
	if art.Key != "" {
		if err := checkDumpArtifact(art); err != nil {
			field := "artifact"
			var ae *artifactError
			if errors.As(err, &ae) {
				field = ae.Field
			}
			return nil, bad(field, "%v", err)
		}
		if p.Store == nil {
			return nil, NonRetryable(ErrInvalidConfig, fmt.Errorf("%s in %q: no backup store configured", what, db))
		}
	}
	if scratch != "" {
		if err := checkScratchName(scratch); err != nil {
			return nil, bad("scratch", "%v", err)
		}
	}
	if side != "" {
		if err := checkSideSchema(side); err != nil {
			return nil, bad("sideSchema", "%v", err)
		}
	}
	var err error
	if j.dbURL, err = p.Config.DatabaseURL(db); err == nil {
		j.adminURL, err = p.Config.DatabaseURL(maintenanceDB)
	}
	if err == nil && scratch != "" {
		j.scratchURL, err = p.Config.DatabaseURL(scratch)
	}
	if err != nil {
		return nil, NonRetryable(ErrInvalidConfig, fmt.Errorf("%s in %q: %w", what, db, err))
	}
	_, j.password = splitPassword(j.dbURL)
	j.phase.Store("")
	j.table.Store("")
	return j, nil
}

func checkSideSchema(name string) error {
	switch {
	case !strings.HasPrefix(name, SideSchemaPrefix) || name == SideSchemaPrefix:
		return fmt.Errorf("side schema %q does not start with %s: refusing to use it", name, SideSchemaPrefix)
	case len(name) > 63:
		return fmt.Errorf("side schema %q is longer than 63 bytes", name)
	case strings.ContainsRune(name, 0):
		return fmt.Errorf("side schema %q contains a NUL byte", name)
	}
	return nil
}

// run heartbeats TablesProgress while fn runs.
func (j *tableJob) run(ctx context.Context, fn func(ctx context.Context) error) error {
	j.heartbeat = func() {
		activity.RecordHeartbeat(ctx, TablesProgress{Phase: j.phase.Load().(string), Table: j.table.Load().(string),
			StoredBytes: j.stored.Load(), RawBytes: j.raw.Load()})
	}
	j.setPhase("start", "")
	stop := j.p.startHeartbeat(ctx, j.heartbeat)
	defer stop()
	if err := fn(ctx); err != nil {
		return err
	}
	stop()
	j.setPhase("done", "")
	return nil
}

func (j *tableJob) setPhase(phase, table string) {
	j.phase.Store(phase)
	j.table.Store(table)
	if j.heartbeat != nil {
		j.heartbeat()
	}
}

// classify turns err into the activity's error: application errors pass as
// they are (they name the table already); the rest is named, classified and
// scrubbed of the password.
func (j *tableJob) classify(err error) error {
	var app *temporal.ApplicationError
	if errors.As(err, &app) {
		return err
	}
	return classifyDumpError(withFix(fmt.Errorf("%s in %q: %w", j.what, j.db, err)), secretForms(j.password))
}

// tableNames are the tables as "schema.table" for messages.
func (j *tableJob) tableNames() string {
	s := make([]string, len(j.tables))
	for i, t := range j.tables {
		s[i] = t.String()
	}
	return strings.Join(s, ", ")
}

// openConn connects for a table activity with an empty search_path, so every
// name in its SQL and in format_type's answers is schema-qualified.
func openConn(ctx context.Context, dbURL string) (*pgx.Conn, error) {
	conn, err := connectAs(ctx, dbURL, "drflow tables")
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "SELECT pg_catalog.set_config('search_path', '', false)"); err != nil {
		closeConn(conn)
		return nil, fmt.Errorf("set search_path: %w", err)
	}
	return conn, nil
}

// liveTable is a resolved live table.
type liveTable struct {
	tableName
	oid  uint32
	cols []TableColumn
	pk   []string
}

// resolve finds each table in conn's database: its oid, columns and primary
// key. A missing table is ErrTableNotFound naming the database's tables.
func (j *tableJob) resolve(ctx context.Context, conn *pgx.Conn) ([]liveTable, error) {
	out := make([]liveTable, 0, len(j.tables))
	for _, t := range j.tables {
		var oid uint32
		var kind string
		err := conn.QueryRow(ctx, `SELECT c.oid, c.relkind::text FROM pg_catalog.pg_class c
			JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`, t.schema, t.rel).Scan(&oid, &kind)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, j.notFound(ctx, conn, t, "does not exist")
		}
		if err != nil {
			return nil, fmt.Errorf("look up table %s: %w", t, err)
		}
		switch kind {
		case "r":
		case "p":
			return nil, NonRetryable(ErrInvalidInput, fmt.Errorf("%s in %q: table %s is partitioned, and its rows live in its partitions: name the partitions instead", j.what, j.db, t))
		default:
			return nil, j.notFound(ctx, conn, t, "is not a table (a view, sequence or index)")
		}
		lt := liveTable{tableName: t, oid: oid}
		if lt.cols, err = tableColumns(ctx, conn, oid); err != nil {
			return nil, fmt.Errorf("read the columns of %s: %w", t, err)
		}
		rows, err := conn.Query(ctx, `SELECT a.attname FROM pg_catalog.pg_constraint c
			CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY k(attnum, ord)
			JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
			WHERE c.conrelid = $1 AND c.contype = 'p' ORDER BY k.ord`, oid)
		if err == nil {
			lt.pk, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		if err != nil {
			return nil, fmt.Errorf("read the primary key of %s: %w", t, err)
		}
		out = append(out, lt)
	}
	return out, nil
}

// notFound is the ErrTableNotFound of table t, naming the database's tables.
func (j *tableJob) notFound(ctx context.Context, conn *pgx.Conn, t tableName, why string) error {
	have := "it has no tables"
	rows, err := conn.Query(ctx, `SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
		AND n.nspname NOT LIKE $1 ORDER BY 1 LIMIT 51`, SideSchemaPrefix+"%")
	if err == nil {
		var names []string
		if names, err = pgx.CollectRows(rows, pgx.RowTo[string]); err == nil && len(names) > 0 {
			if len(names) > 50 {
				names = append(names[:50], "…")
			}
			have = "its tables: " + strings.Join(names, ", ")
		}
	}
	return NonRetryable(ErrTableNotFound, fmt.Errorf("%s: table %s %s in database %q (%s): check the name (\"table\" means public.table; otherwise \"schema.table\"); a dropped table comes back with TotalDBLoss and a targetSuffix, restored next to the live database",
		j.what, t, why, j.db, have))
}

// tableColumns reads the columns of table oid, in order, without dropped ones.
func tableColumns(ctx context.Context, conn *pgx.Conn, oid uint32) ([]TableColumn, error) {
	rows, err := conn.Query(ctx, `SELECT attname, pg_catalog.format_type(atttypid, atttypmod), attgenerated <> ''
		FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, oid)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (TableColumn, error) {
		var c TableColumn
		err := r.Scan(&c.Name, &c.Type, &c.Generated)
		return c, err
	})
}

// columnDiffs names each difference between the live columns and the set's.
func columnDiffs(live, set []TableColumn) []string {
	var diffs []string
	find := func(cols []TableColumn, name string) (TableColumn, bool) {
		i := slices.IndexFunc(cols, func(c TableColumn) bool { return c.Name == name })
		if i < 0 {
			return TableColumn{}, false
		}
		return cols[i], true
	}
	gen := func(g bool) string {
		if g {
			return "generated"
		}
		return "not generated"
	}
	for _, l := range live {
		s, ok := find(set, l.Name)
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("column %q (%s) is live only", l.Name, l.Type))
		case s.Type != l.Type:
			diffs = append(diffs, fmt.Sprintf("column %q is %s live, %s in the set", l.Name, l.Type, s.Type))
		case s.Generated != l.Generated:
			diffs = append(diffs, fmt.Sprintf("column %q is %s live, %s in the set", l.Name, gen(l.Generated), gen(s.Generated)))
		}
	}
	for _, s := range set {
		if _, ok := find(live, s.Name); !ok {
			diffs = append(diffs, fmt.Sprintf("column %q (%s) is in the set only", s.Name, s.Type))
		}
	}
	return diffs
}

// mismatch is the message of a table whose columns differ from the set's.
func mismatch(t tableName, diffs []string) string {
	return fmt.Sprintf("table %s: its columns differ from the set's: %s; a replace copies data only and needs them to match: restore it side by side (mode \"side\") and copy the rows you need by hand, or make the live table match the set first",
		t, strings.Join(diffs, "; "))
}

// copyColumns are the live table's columns a replace writes: all but generated ones.
func (t liveTable) copyColumns() []string {
	var out []string
	for _, c := range t.cols {
		if !c.Generated {
			out = append(out, c.Name)
		}
	}
	return out
}

// method says how a replace writes t.
func (t liveTable) method() string {
	if len(t.pk) == 0 {
		return "no primary key: delete every row, insert the set's"
	}
	return fmt.Sprintf("merge by primary key (%s): delete rows the set lacks, update rows that differ, insert missing rows", strings.Join(t.pk, ", "))
}

// ownedSequences lists the sequences owned by columns of table oid (serial and
// identity columns): sequence (qualified, quoted) and column.
func ownedSequences(ctx context.Context, conn *pgx.Conn, oid uint32) ([][2]string, error) {
	rows, err := conn.Query(ctx, `SELECT s.oid::pg_catalog.regclass::text, a.attname
		FROM pg_catalog.pg_depend d
		JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
		JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
		WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
		AND d.refobjid = $1 AND d.deptype IN ('a', 'i') ORDER BY 2`, oid)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]string, error) {
		var s [2]string
		err := r.Scan(&s[0], &s[1])
		return s, err
	})
}

// foreignKey is a live foreign key touching a restored table.
type foreignKey struct {
	name          string
	from, to      tableName
	cols, refCols []string
	onDelete      string
	// fromSide, toSide: the table is restored, so its rows after a replace are
	// the set's.
	fromSide, toSide bool
	fromOid, toOid   uint32
	violations       int64
	problem          string
}

// foreignKeys reads every foreign key from or to one of tables, in name order.
// Partition clones of a constraint are left out: the parent's is checked.
func foreignKeys(ctx context.Context, conn *pgx.Conn, tables []liveTable) ([]foreignKey, error) {
	oids := make([]uint32, len(tables))
	for i, t := range tables {
		oids[i] = t.oid
	}
	rows, err := conn.Query(ctx, `SELECT con.conname, cn.nspname, cr.relname, fn.nspname, fr.relname, con.conrelid, con.confrelid,
		ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
			JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum ORDER BY k.ord)::text[],
		ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(attnum, ord)
			JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum ORDER BY k.ord)::text[],
		CASE con.confdeltype WHEN 'a' THEN 'no action' WHEN 'r' THEN 'restrict' WHEN 'c' THEN 'cascade'
			WHEN 'n' THEN 'set null' WHEN 'd' THEN 'set default' ELSE con.confdeltype::text END
		FROM pg_catalog.pg_constraint con
		JOIN pg_catalog.pg_class cr ON cr.oid = con.conrelid JOIN pg_catalog.pg_namespace cn ON cn.oid = cr.relnamespace
		JOIN pg_catalog.pg_class fr ON fr.oid = con.confrelid JOIN pg_catalog.pg_namespace fn ON fn.oid = fr.relnamespace
		WHERE con.contype = 'f' AND con.conparentid = 0 AND (con.conrelid = ANY($1) OR con.confrelid = ANY($1))
		ORDER BY con.conname, cn.nspname, cr.relname`, oids)
	if err != nil {
		return nil, fmt.Errorf("read foreign keys: %w", err)
	}
	fks, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (foreignKey, error) {
		var fk foreignKey
		err := r.Scan(&fk.name, &fk.from.schema, &fk.from.rel, &fk.to.schema, &fk.to.rel, &fk.fromOid, &fk.toOid,
			&fk.cols, &fk.refCols, &fk.onDelete)
		return fk, err
	})
	if err != nil {
		return nil, fmt.Errorf("read foreign keys: %w", err)
	}
	for i := range fks {
		fks[i].fromSide = slices.Contains(oids, fks[i].fromOid)
		fks[i].toSide = slices.Contains(oids, fks[i].toOid)
	}
	return fks, nil
}

func (fk foreignKey) rowsWhat() string {
	w := func(side bool) string {
		if side {
			return "set"
		}
		return "live"
	}
	return w(fk.fromSide) + " → " + w(fk.toSide)
}

// check counts the referencing rows that would have no referenced row after a
// replace: rows of fromRel whose key columns are all set (MATCH SIMPLE and
// FULL skip rows with a NULL) and have no match in toRel. fromRel and toRel
// are the live tables or the set's rows (side copies or temporary tables).
func (fk *foreignKey) check(ctx context.Context, conn pgx.Tx, fromRel, toRel string) error {
	var notNull, match []string
	for i, c := range fk.cols {
		r := pgx.Identifier{c}.Sanitize()
		notNull = append(notNull, "r."+r+" IS NOT NULL")
		match = append(match, "p."+pgx.Identifier{fk.refCols[i]}.Sanitize()+" = r."+r)
	}
	q := "SELECT count(*) FROM ONLY " + fromRel + " AS r WHERE " + strings.Join(notNull, " AND ") +
		" AND NOT EXISTS (SELECT FROM ONLY " + toRel + " AS p WHERE " + strings.Join(match, " AND ") + ")"
	if err := conn.QueryRow(ctx, q).Scan(&fk.violations); err != nil {
		return fmt.Errorf("check foreign key %s on %s: %w", fk.name, fk.from, err)
	}
	if fk.violations == 0 {
		return nil
	}
	n, verb := fmt.Sprintf("%d rows", fk.violations), "reference"
	if fk.violations == 1 {
		n, verb = "1 row", "references"
	}
	switch {
	case !fk.fromSide:
		fk.problem = fmt.Sprintf("table %s: foreign key %s on %s (%s) → %s (%s): %s of the live %s %s rows the set's %s does not have, which a replace would delete (on delete %s): restore %s together with %s (tables), remove or fix those rows first, or restore side by side (mode \"side\")",
			fk.to, fk.name, fk.from, strings.Join(fk.cols, ", "), fk.to, strings.Join(fk.refCols, ", "), n, fk.from, verb, fk.to, fk.onDelete, fk.from, fk.to)
	case !fk.toSide:
		fk.problem = fmt.Sprintf("table %s: foreign key %s on %s (%s) → %s (%s): %s of the set's %s %s rows that do not exist in the live %s: restore %s together with %s (tables), or restore side by side (mode \"side\")",
			fk.from, fk.name, fk.from, strings.Join(fk.cols, ", "), fk.to, strings.Join(fk.refCols, ", "), n, fk.from, verb, fk.to, fk.to, fk.from)
	default:
		fk.problem = fmt.Sprintf("table %s: foreign key %s on %s (%s) → %s (%s): %s of the set's %s %s rows the set's %s does not have (the live constraint is not the set's): restore side by side (mode \"side\")",
			fk.from, fk.name, fk.from, strings.Join(fk.cols, ", "), fk.to, strings.Join(fk.refCols, ", "), n, fk.from, verb, fk.to)
	}
	return nil
}

func (fk foreignKey) result() ForeignKeyCheck {
	return ForeignKeyCheck{Constraint: fk.name, Table: fk.from.String(), Columns: fk.cols, References: fk.to.String(),
		RefColumns: fk.refCols, OnDelete: fk.onDelete, Rows: fk.rowsWhat(), Violations: fk.violations, Problem: fk.problem}
}

// noKeyConflicts are the foreign keys that reference a restored table without a
// primary key from a table that is not restored: emptying it would break them.
func noKeyConflicts(tables []liveTable, fks []foreignKey) []string {
	var out []string
	for _, fk := range fks {
		if fk.fromSide || !fk.toSide {
			continue
		}
		i := slices.IndexFunc(tables, func(t liveTable) bool { return t.oid == fk.toOid })
		if len(tables[i].pk) == 0 {
			out = append(out, fmt.Sprintf("table %s: it has no primary key, so a replace empties and refills it, and foreign key %s on %s references it: restore %s together with it (tables), or restore side by side (mode \"side\")",
				fk.to, fk.name, fk.from, fk.from))
		}
	}
	return out
}

// tocEntry is one line of `pg_restore --list`.
type tocEntry struct {
	line string
	// desc is the entry type ("TABLE", "TABLE DATA"); rest is "schema name owner".
	desc, rest string
}

// readTOC runs `pg_restore --list` on the staged dump.
func (j *tableJob) readTOC(ctx context.Context, path string) ([]tocEntry, error) {
	var out bytes.Buffer
	stderr, err := j.p.pgRestore(ctx, []string{"--list", path}, "", &out)
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return nil, j.badDump(ErrArchiveCorrupt, "pg_restore --list cannot read it: "+orExit(stderr, exit))
	}
	if err != nil {
		return nil, err
	}
	var toc []tocEntry
	for _, line := range strings.Split(out.String(), "\n") {
		if line == "" || line[0] == ';' {
			continue
		}
		// "3380; 0 16386 TABLE DATA public tasks_task postgres"
		_, after, ok := strings.Cut(line, "; ")
		if !ok {
			continue
		}
		f := strings.SplitN(after, " ", 3)
		if len(f) < 3 {
			continue
		}
		e := tocEntry{line: line, rest: f[2]}
		for _, d := range []string{"TABLE DATA ", "TABLE "} {
			if strings.HasPrefix(e.rest, d) {
				e.desc, e.rest = strings.TrimSpace(d), e.rest[len(d):]
				break
			}
		}
		if e.desc != "" {
			toc = append(toc, e)
		}
	}
	return toc, nil
}

// is reports whether e names table t: "schema name owner" (owner may be empty).
func (e tocEntry) is(t tableName) bool {
	p := t.schema + " " + t.rel
	return e.rest == p || strings.HasPrefix(e.rest, p+" ")
}

// dataEntries returns the TABLE DATA lines of the tables, for --use-list. A
// table the dump lacks is ErrTableNotInSet naming the dump's tables.
func (j *tableJob) dataEntries(toc []tocEntry) ([]string, error) {
	var lines []string
	for _, t := range j.tables {
		var def, data bool
		for _, e := range toc {
			if !e.is(t) {
				continue
			}
			switch e.desc {
			case "TABLE":
				def = true
			case "TABLE DATA":
				data = true
				lines = append(lines, e.line)
			}
		}
		if data && def {
			continue
		}
		why := "holds no table " + t.String()
		if def {
			why = "holds the definition of " + t.String() + " but not its data (dumped with --exclude-table-data?)"
		}
		var have []string
		for _, e := range toc {
			if f := strings.SplitN(e.rest, " ", 3); e.desc == "TABLE" && len(f) >= 2 {
				have = append(have, f[0]+"."+f[1])
			}
		}
		return nil, NonRetryable(ErrTableNotInSet, fmt.Errorf("%s: %s %s in its dump of database %q (%s; the dump's tables: %s): pick a set that has it (setId) or leave it out (tables)",
			j.what, j.setLabel(), why, j.db, j.art.Key, strings.Join(have, ", ")))
	}
	return lines, nil
}

// setLabel names the set in messages: "set <id>".
func (j *tableJob) setLabel() string {
	if j.setID == "" {
		return "the set"
	}
	return "set " + j.setID
}

// badDump is the non-retryable error of a stored dump that fails its checks.
func (j *tableJob) badDump(kind, problem string) error {
	return NonRetryable(kind, fmt.Errorf("%s: %s: %s: nothing was changed; restore from another set (setId) or run VerifyBackup on %s to see which of its dumps are intact",
		j.what, j.art.Key, problem, j.setLabel()))
}

// setTable is one restored table in the scratch database.
type setTable struct {
	cols []TableColumn
	rows int64
}

// withScratch stages the dump, restores the tables into the scratch database
// and calls fn with a connection to it; the scratch database and the staged
// file are removed on every path. download and restore receive the times.
func (j *tableJob) withScratch(ctx context.Context, download, restore *time.Duration, fn func(scratch *pgx.Conn, set map[tableName]setTable) error) (err error) {
	j.setPhase("download", "")
	started := time.Now()
	path, f, remove, err := stageDump(ctx, j.p.Store, j.p.Age, j.art, "drflow-tables-*.dump", &j.stored, &j.raw)
	*download = time.Since(started)
	defer remove()
	if errors.Is(err, store.ErrNotFound) {
		return NonRetryable(ErrArtifactNotFound, fmt.Errorf("%s: the manifest names an object the backup store does not hold (%w): restore from another set (setId) or run VerifyBackup on it", j.what, err))
	}
	if err != nil {
		return err
	}
	if f.kind != "" {
		return j.badDump(f.kind, f.problem)
	}
	started = time.Now()
	defer func() { *restore = time.Since(started) }()
	toc, err := j.readTOC(ctx, path)
	if err != nil {
		return err
	}
	lines, err := j.dataEntries(toc)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	j.setPhase("scratch", "")
	// Registered before the database exists, so that every way out drops it.
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dropTimeout)
		defer cancel()
		if derr := dropDatabase(dctx, j.adminURL, j.scratch); derr != nil {
			err = errors.Join(err, fmt.Errorf("drop scratch database %q (a retry drops it): %w", j.scratch, derr))
		}
	}()
	if err := j.createScratch(ctx); err != nil {
		return err
	}
	connURL, _ := splitPassword(j.scratchURL)
	// The whole pre-data section: the tables' types, functions and sequences
	// come with it. Without --exit-on-error: an object the tables do not need
	// may fail (an extension the role may not create); the check below fails
	// the restore when a table is missing, with pg_restore's complaint.
	preStderr, err := j.p.pgRestore(ctx, []string{"--section=pre-data", "--no-owner", "--no-privileges", "--no-password", "--dbname=" + connURL, path}, j.password, io.Discard)
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		return err
	}
	// Next to the staged dump, in the worker's scratch directory in TMPDIR.
	list, removeList, err := scratch.CreateTemp("drflow-tables-*.list")
	if err != nil {
		return fmt.Errorf("temporary file: %w", err)
	}
	defer func() { _ = removeList() }()
	_, err = list.WriteString(strings.Join(lines, "\n") + "\n")
	if cerr := list.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("temporary file: %w", err)
	}
	stderr, err := j.p.pgRestore(ctx, []string{"--data-only", "--use-list=" + list.Name(), "--no-owner", "--no-privileges", "--exit-on-error", "--no-password",
		"--dbname=" + connURL, path}, j.password, io.Discard)
	if errors.As(err, &exit) {
		msg := orExit(stderr, exit)
		if preStderr != "" {
			msg = "pre-data: " + preStderr + "; data: " + msg
		}
		switch {
		case lostConnection(msg):
			return fmt.Errorf("pg_restore into scratch database %q lost the server: %s", j.scratch, msg)
		case archiveUnreadable(msg):
			return j.badDump(ErrArchiveCorrupt, "pg_restore cannot read the archive's data: "+msg)
		}
		return NonRetryable(ErrRestoreFailed, fmt.Errorf("%s: pg_restore of %s into scratch database %s failed: %s; nothing live was changed; %s",
			j.what, j.tableNames(), j.scratch, msg, restoreFix(msg, true)))
	}
	if err != nil {
		return err
	}

	conn, err := openConn(ctx, j.scratchURL)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	set := make(map[tableName]setTable, len(j.tables))
	for _, t := range j.tables {
		var oid *uint32
		if err := conn.QueryRow(ctx, "SELECT to_regclass($1)::oid", t.ident()).Scan(&oid); err != nil {
			return fmt.Errorf("look up the set's %s in scratch database %q: %w", t, j.scratch, err)
		}
		if oid == nil {
			// The pre-data restore failed on the table or on what it needs.
			return NonRetryable(ErrRestoreFailed, fmt.Errorf("%s: pg_restore did not create table %s in scratch database %s: %s; nothing live was changed; %s",
				j.what, t, j.scratch, orNone(preStderr), restoreFix(preStderr, true)))
		}
		var st setTable
		if st.cols, err = tableColumns(ctx, conn, *oid); err != nil {
			return fmt.Errorf("read the set's columns of %s: %w", t, err)
		}
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM ONLY "+t.ident()).Scan(&st.rows); err != nil {
			return fmt.Errorf("count the set's rows of %s: %w", t, err)
		}
		want, ok := j.art.RowCounts[t.String()]
		if !ok && t.schema == "public" {
			want, ok = j.art.RowCounts[t.rel]
		}
		if ok && want != st.rows {
			return j.badDump(ErrRowCountMismatch, fmt.Sprintf("table %s has %d rows restored, %d in the manifest", t, st.rows, want))
		}
		set[t] = st
	}
	return fn(conn, set)
}

func orNone(s string) string {
	if s == "" {
		return "it said nothing"
	}
	return s
}

func (j *tableJob) createScratch(ctx context.Context) error {
	conn, err := connectAs(ctx, j.adminURL, "drflow tables")
	if err != nil {
		return err
	}
	defer closeConn(conn)
	name := pgx.Identifier{j.scratch}.Sanitize()
	// A leftover of an attempt that died: the name is the run's.
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop leftover scratch database %q: %w", j.scratch, err)
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE template0"); err != nil {
		return fmt.Errorf("create scratch database %q: %w", j.scratch, err)
	}
	return nil
}

// sqlString quotes s as an SQL string literal, for the statements that take
// no parameters (COMMENT): an escape string, whatever
// standard_conforming_strings says.
func sqlString(s string) string {
	return "E'" + strings.NewReplacer(`\`, `\\`, "'", `\'`).Replace(s) + "'"
}

// errCopyStopped ends the reading side of a copy whose writing side failed.
var errCopyStopped = errors.New("copy stopped")

// copyRows streams the rows selectSQL returns on from into copyIn (a COPY …
// FROM STDIN) on to, in COPY's text format, and returns how many it wrote.
func copyRows(ctx context.Context, from *pgx.Conn, selectSQL string, to *pgx.Conn, copyIn string) (int64, error) {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := from.PgConn().CopyTo(ctx, pw, "COPY ("+selectSQL+") TO STDOUT")
		pw.CloseWithError(err)
		done <- err
	}()
	tag, err := to.PgConn().CopyFrom(ctx, pr, copyIn)
	pr.CloseWithError(errCopyStopped)
	rerr := <-done
	switch {
	case rerr != nil && !errors.Is(rerr, errCopyStopped):
		return 0, fmt.Errorf("read: %w", rerr)
	case err != nil:
		return 0, fmt.Errorf("write: %w", err)
	}
	return tag.RowsAffected(), nil
}

// columnList is the quoted column names, comma-separated, each prefixed.
func columnList(prefix string, cols []string) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = prefix + pgx.Identifier{c}.Sanitize()
	}
	return strings.Join(q, ", ")
}

// columnDefs is a CREATE TABLE column list with the given types: no
// constraints, defaults or generation.
func columnDefs(cols []TableColumn) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = pgx.Identifier{c.Name}.Sanitize() + " " + c.Type
	}
	return strings.Join(q, ", ")
}

func (j *tableJob) plan(ctx context.Context) (TablesPlan, error) {
	plan := TablesPlan{Database: j.db, Key: j.art.Key}
	live, err := openConn(ctx, j.dbURL)
	if err != nil {
		return plan, err
	}
	defer closeConn(live)
	tables, err := j.resolve(ctx, live)
	if err != nil {
		return plan, err
	}
	err = j.withScratch(ctx, &plan.Download, &plan.Restore, func(scratch *pgx.Conn, set map[tableName]setTable) error {
		j.setPhase("plan", "")
		fks, err := foreignKeys(ctx, live, tables)
		if err != nil {
			return err
		}
		for _, t := range tables {
			st := set[t.tableName]
			tp := TablePlan{Table: t.String(), SetRows: st.rows, PrimaryKey: t.pk, Method: t.method()}
			if err := live.QueryRow(ctx, "SELECT count(*) FROM ONLY "+t.ident()).Scan(&tp.LiveRows); err != nil {
				return fmt.Errorf("count the live rows of %s: %w", t, err)
			}
			diffs := columnDiffs(t.cols, st.cols)
			tp.ColumnsMatch, tp.ColumnDiffs = len(diffs) == 0, diffs
			if len(diffs) > 0 {
				plan.Mismatches = append(plan.Mismatches, mismatch(t.tableName, diffs))
			}
			seqs, err := ownedSequences(ctx, live, t.oid)
			if err != nil {
				return fmt.Errorf("read the sequences of %s: %w", t, err)
			}
			for _, s := range seqs {
				tp.Sequences = append(tp.Sequences, s[0]+" ("+s[1]+")")
			}
			plan.Tables = append(plan.Tables, tp)
		}
		plan.Conflicts = append(plan.Conflicts, noKeyConflicts(tables, fks)...)
		return j.planForeignKeys(ctx, live, scratch, tables, set, fks, &plan)
	})
	return plan, err
}

// planForeignKeys checks fks against the set's rows: the key columns each
// needs of the set's tables are copied into temporary tables of the live
// session (dropped when it ends: nothing live changes), read in one
// transaction that is rolled back.
func (j *tableJob) planForeignKeys(ctx context.Context, live, scratch *pgx.Conn, tables []liveTable, set map[tableName]setTable, fks []foreignKey, plan *TablesPlan) error {
	need := map[uint32][]string{}
	add := func(oid uint32, cols []string) {
		for _, c := range cols {
			if !slices.Contains(need[oid], c) {
				need[oid] = append(need[oid], c)
			}
		}
	}
	for _, fk := range fks {
		if fk.fromSide {
			add(fk.fromOid, fk.cols)
		}
		if fk.toSide {
			add(fk.toOid, fk.refCols)
		}
	}
	tx, err := live.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = tx.Rollback(rctx)
	}()
	missing := map[uint32]string{} // a needed column the set's table lacks
	for _, t := range tables {
		cols := need[t.oid]
		if len(cols) == 0 {
			continue
		}
		st := set[t.tableName]
		var defs []TableColumn
		for _, c := range cols {
			i := slices.IndexFunc(st.cols, func(sc TableColumn) bool { return sc.Name == c })
			if i < 0 {
				missing[t.oid] = c
				break
			}
			defs = append(defs, st.cols[i])
		}
		if missing[t.oid] != "" {
			continue
		}
		j.setPhase("plan", t.String())
		tmp := pgx.Identifier{"pg_temp", t.rel}.Sanitize()
		// ON COMMIT DROP: gone with the rolled-back transaction at the latest.
		if _, err := tx.Exec(ctx, "CREATE TEMPORARY TABLE "+pgx.Identifier{t.rel}.Sanitize()+" ("+columnDefs(defs)+") ON COMMIT DROP"); err != nil {
			return fmt.Errorf("temporary table for the set's %s: %w", t, err)
		}
		if _, err := copyRows(ctx, scratch, "SELECT "+columnList("", cols)+" FROM ONLY "+t.ident(), tx.Conn(),
			"COPY "+tmp+" ("+columnList("", cols)+") FROM STDIN"); err != nil {
			return fmt.Errorf("copy the set's keys of %s: %w", t, err)
		}
		if _, err := tx.Exec(ctx, "ANALYZE "+tmp); err != nil {
			return fmt.Errorf("analyze the set's keys of %s: %w", t, err)
		}
	}
	rel := func(t tableName, oid uint32, side bool) string {
		if side {
			return pgx.Identifier{"pg_temp", t.rel}.Sanitize()
		}
		return t.ident()
	}
	for i := range fks {
		fk := &fks[i]
		switch {
		case fk.fromSide && missing[fk.fromOid] != "":
			fk.violations, fk.problem = -1, fmt.Sprintf("not checked: the set's %s has no column %q", fk.from, missing[fk.fromOid])
		case fk.toSide && missing[fk.toOid] != "":
			fk.violations, fk.problem = -1, fmt.Sprintf("not checked: the set's %s has no column %q", fk.to, missing[fk.toOid])
		default:
			j.setPhase("plan", fk.from.String())
			if err := fk.check(ctx, tx, rel(fk.from, fk.fromOid, fk.fromSide), rel(fk.to, fk.toOid, fk.toSide)); err != nil {
				return err
			}
			if fk.violations > 0 {
				plan.Conflicts = append(plan.Conflicts, fk.problem)
			}
		}
		plan.ForeignKeys = append(plan.ForeignKeys, fk.result())
	}
	return nil
}

func (j *tableJob) sideRel(t tableName) string { return pgx.Identifier{j.side, t.rel}.Sanitize() }

// dropStatement is how the operator removes the side copies.
func (j *tableJob) dropStatement() string {
	return "DROP SCHEMA " + pgx.Identifier{j.side}.Sanitize() + " CASCADE"
}

func (j *tableJob) restoreSide(ctx context.Context) (TablesSideResult, error) {
	res := TablesSideResult{Database: j.db, SideSchema: j.side, Drop: j.dropStatement()}
	live, err := openConn(ctx, j.dbURL)
	if err != nil {
		return res, err
	}
	defer closeConn(live)
	if _, err := j.resolve(ctx, live); err != nil {
		return res, err
	}
	err = j.withScratch(ctx, &res.Download, &res.Restore, func(scratch *pgx.Conn, set map[tableName]setTable) error {
		started := time.Now()
		defer func() { res.Copy = time.Since(started) }()
		tx, err := live.Begin(ctx)
		if err != nil {
			return fmt.Errorf("begin: %w", err)
		}
		defer func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			_ = tx.Rollback(rctx) // after a commit: nothing to roll back
		}()
		schema := pgx.Identifier{j.side}.Sanitize()
		comment := fmt.Sprintf("drflow RestoreTables: the tables %s of database %s as in %s (%s); drop with %s",
			j.tableNames(), j.db, j.setLabel(), j.art.Key, j.dropStatement())
		if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+schema); err != nil {
			return fmt.Errorf("create side schema %s: %w", j.side, err)
		}
		if _, err := tx.Exec(ctx, "COMMENT ON SCHEMA "+schema+" IS "+sqlString(comment)); err != nil {
			return fmt.Errorf("comment on side schema %s: %w", j.side, err)
		}
		for _, t := range j.tables {
			j.setPhase("copy", t.String())
			st := set[t]
			side := j.sideRel(t)
			// A copy an earlier attempt made is made again: the copies always
			// hold exactly the set's rows.
			if _, err := tx.Exec(ctx, "DROP TABLE IF EXISTS "+side); err != nil {
				return fmt.Errorf("drop the earlier side copy of %s: %w", t, err)
			}
			if _, err := tx.Exec(ctx, "CREATE TABLE "+side+" ("+columnDefs(st.cols)+")"); err != nil {
				return fmt.Errorf("create side copy %s.%s of %s: %w", j.side, t.rel, t, err)
			}
			if _, err := tx.Exec(ctx, "COMMENT ON TABLE "+side+" IS "+sqlString(fmt.Sprintf("%s as in %s", t, j.setLabel()))); err != nil {
				return fmt.Errorf("comment on side copy of %s: %w", t, err)
			}
			names := make([]string, len(st.cols))
			for i, c := range st.cols {
				names[i] = c.Name
			}
			n, err := copyRows(ctx, scratch, "SELECT "+columnList("", names)+" FROM ONLY "+t.ident(), tx.Conn(),
				"COPY "+side+" ("+columnList("", names)+") FROM STDIN")
			if err != nil {
				return fmt.Errorf("copy the set's %s into %s.%s: %w", t, j.side, t.rel, err)
			}
			if n != st.rows {
				return fmt.Errorf("copy the set's %s into %s.%s: %d rows copied, %d restored", t, j.side, t.rel, n, st.rows)
			}
			res.Tables = append(res.Tables, SideTable{Table: t.String(), Side: j.side + "." + t.rel, Rows: n})
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("commit the side copies: %w", err)
		}
		for _, t := range j.tables {
			j.setPhase("analyze", t.String())
			if _, err := live.Exec(ctx, "ANALYZE "+j.sideRel(t)); err != nil {
				return fmt.Errorf("analyze side copy of %s: %w", t, err)
			}
		}
		return nil
	})
	return res, err
}

// sideTables checks that every table has its side copy and reads its columns.
func (j *tableJob) sideTables(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) (map[tableName][]TableColumn, error) {
	out := map[tableName][]TableColumn{}
	for _, t := range j.tables {
		var oid *uint32
		if err := q.QueryRow(ctx, "SELECT to_regclass($1)::oid", j.sideRel(t)).Scan(&oid); err != nil {
			return nil, fmt.Errorf("look up the side copy of %s: %w", t, err)
		}
		if oid == nil {
			return nil, NonRetryable(ErrInvalidInput, fmt.Errorf("%s: table %s has no side copy %s.%s in database %q: restore the tables side by side first (RestoreTablesSide)",
				j.what, t, j.side, t.rel, j.db))
		}
		rows, err := q.Query(ctx, `SELECT attname, pg_catalog.format_type(atttypid, atttypmod), false
			FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, *oid)
		if err != nil {
			return nil, fmt.Errorf("read the columns of the side copy of %s: %w", t, err)
		}
		cols, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (TableColumn, error) {
			var c TableColumn
			err := r.Scan(&c.Name, &c.Type, &c.Generated)
			return c, err
		})
		if err != nil {
			return nil, fmt.Errorf("read the columns of the side copy of %s: %w", t, err)
		}
		out[t] = cols
	}
	return out, nil
}

// parentsFirst orders tables so that a table comes after every other restored
// table it references; a cycle keeps the input order for its tables.
func parentsFirst(tables []liveTable, fks []foreignKey) []liveTable {
	var out []liveTable
	done := map[uint32]bool{}
	for len(out) < len(tables) {
		progress := false
		for _, t := range tables {
			if done[t.oid] {
				continue
			}
			ready := true
			for _, fk := range fks {
				if fk.fromOid == t.oid && fk.toSide && fk.toOid != t.oid && !done[fk.toOid] {
					ready = false
				}
			}
			if ready {
				out, done[t.oid], progress = append(out, t), true, true
			}
		}
		if !progress {
			for _, t := range tables {
				if !done[t.oid] {
					out, done[t.oid] = append(out, t), true
				}
			}
		}
	}
	return out
}

func (j *tableJob) replace(ctx context.Context) (ReplaceTablesResult, error) {
	res := ReplaceTablesResult{Database: j.db, SideSchema: j.side}
	live, err := openConn(ctx, j.dbURL)
	if err != nil {
		return res, err
	}
	defer closeConn(live)
	started := time.Now()
	tx, err := live.Begin(ctx)
	if err != nil {
		return res, fmt.Errorf("begin: %w", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = tx.Rollback(rctx) // after the commit: nothing to roll back
	}()
	lockTimeout := j.p.LockWaitTimeout
	if lockTimeout <= 0 {
		lockTimeout = defaultReplaceLockTimeout
	}
	if _, err := tx.Exec(ctx, "SELECT pg_catalog.set_config('lock_timeout', $1, true)", strconv.FormatInt(max(lockTimeout.Milliseconds(), 1), 10)); err != nil {
		return res, fmt.Errorf("set lock_timeout: %w", err)
	}
	tables, err := j.resolve(ctx, live)
	if err != nil {
		return res, err
	}
	j.setPhase("replace", "")
	idents := make([]string, len(tables))
	for i, t := range tables {
		idents[i] = t.ident()
	}
	// EXCLUSIVE: readers go on; writers, and FK checks of new referencing rows
	// (which take KEY SHARE row locks), wait until the commit.
	if _, err := tx.Exec(ctx, "LOCK TABLE "+strings.Join(idents, ", ")+" IN EXCLUSIVE MODE"); err != nil {
		return res, fmt.Errorf("lock %s (another session holds a conflicting lock; retried): %w", j.tableNames(), err)
	}
	// Resolved again under the lock: the columns cannot change any more.
	if tables, err = j.resolve(ctx, live); err != nil {
		return res, err
	}
	sides, err := j.sideTables(ctx, tx)
	if err != nil {
		return res, err
	}
	var mismatches []string
	for _, t := range tables {
		// A side copy holds generated columns as plain ones; the plan compared
		// which columns are generated.
		side := slices.DeleteFunc(slices.Clone(sides[t.tableName]), func(c TableColumn) bool {
			return slices.ContainsFunc(t.cols, func(l TableColumn) bool { return l.Generated && l.Name == c.Name })
		})
		if diffs := columnDiffs(withoutGenerated(t.cols), side); len(diffs) > 0 {
			mismatches = append(mismatches, mismatch(t.tableName, diffs))
		}
	}
	if len(mismatches) > 0 {
		return res, NonRetryable(ErrSchemaMismatch, fmt.Errorf("%s in %q: %s; nothing was changed", j.what, j.db, strings.Join(mismatches, "; ")))
	}
	fks, err := foreignKeys(ctx, live, tables)
	if err != nil {
		return res, err
	}
	conflicts := noKeyConflicts(tables, fks)
	for i := range fks {
		fk := &fks[i]
		from, to := fk.from.ident(), fk.to.ident()
		if fk.fromSide {
			from = j.sideRel(fk.from)
		}
		if fk.toSide {
			to = j.sideRel(fk.to)
		}
		if err := fk.check(ctx, tx, from, to); err != nil {
			return res, err
		}
		if fk.violations > 0 {
			conflicts = append(conflicts, fk.problem)
		}
	}
	if len(conflicts) > 0 {
		return res, NonRetryable(ErrForeignKeyConflict, fmt.Errorf("%s in %q: %s; nothing was changed", j.what, j.db, strings.Join(conflicts, "; ")))
	}

	// The destructive part: not started once the activity is cancelled.
	if err := ctx.Err(); err != nil {
		return res, err
	}
	order := parentsFirst(tables, fks)
	reps := map[uint32]*TableReplace{}
	for _, t := range order {
		r := &TableReplace{Table: t.String(), Method: t.method()}
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM ONLY "+t.ident()).Scan(&r.Before); err != nil {
			return res, fmt.Errorf("count the rows of %s: %w", t, err)
		}
		reps[t.oid] = r
	}
	// Deletes children first, so a referenced row goes after its referencing
	// rows; then updates and inserts parents first, so a referenced row is there
	// before its referencing rows.
	for i := len(order) - 1; i >= 0; i-- {
		t := order[i]
		j.setPhase("replace", t.String())
		q := "DELETE FROM ONLY " + t.ident()
		if len(t.pk) > 0 {
			q += " AS l WHERE NOT EXISTS (SELECT FROM " + j.sideRel(t.tableName) + " AS s WHERE " + keyMatch(t.pk) + ")"
		}
		tag, err := tx.Exec(ctx, q)
		if err != nil {
			return res, j.writeError(t, "delete", err)
		}
		reps[t.oid].Deleted = tag.RowsAffected()
	}
	for _, t := range order {
		j.setPhase("replace", t.String())
		cols := t.copyColumns()
		side := j.sideRel(t.tableName)
		var set []string
		for _, c := range cols {
			if !slices.Contains(t.pk, c) {
				set = append(set, pgx.Identifier{c}.Sanitize()+" = s."+pgx.Identifier{c}.Sanitize())
			}
		}
		if len(t.pk) > 0 && len(set) > 0 {
			tag, err := tx.Exec(ctx, "UPDATE ONLY "+t.ident()+" AS l SET "+strings.Join(set, ", ")+" FROM "+side+" AS s WHERE "+keyMatch(t.pk)+
				" AND ROW("+columnList("l.", cols)+")::text IS DISTINCT FROM ROW("+columnList("s.", cols)+")::text")
			if err != nil {
				return res, j.writeError(t, "update", err)
			}
			reps[t.oid].Updated = tag.RowsAffected()
		}
		q := "INSERT INTO " + t.ident() + " (" + columnList("", cols) + ") OVERRIDING SYSTEM VALUE SELECT " + columnList("s.", cols) + " FROM " + side + " AS s"
		if len(t.pk) > 0 {
			q += " WHERE NOT EXISTS (SELECT FROM ONLY " + t.ident() + " AS l WHERE " + keyMatch(t.pk) + ")"
		}
		tag, err := tx.Exec(ctx, q)
		if err != nil {
			return res, j.writeError(t, "insert", err)
		}
		reps[t.oid].Inserted = tag.RowsAffected()
	}
	for _, t := range order {
		r := reps[t.oid]
		seqs, err := ownedSequences(ctx, live, t.oid)
		if err != nil {
			return res, fmt.Errorf("read the sequences of %s: %w", t, err)
		}
		for _, s := range seqs {
			sr, err := moveSequence(ctx, tx, t, s[0], s[1])
			if err != nil {
				return res, err
			}
			r.Sequences = append(r.Sequences, sr)
		}
		onlyLive, onlySide, err := diffRows(ctx, tx, t.ident(), j.sideRel(t.tableName), t.copyColumns())
		if err != nil {
			return res, fmt.Errorf("compare %s with its side copy: %w", t, err)
		}
		if onlyLive+onlySide > 0 {
			return res, NonRetryable(ErrRestoreFailed, fmt.Errorf("%s in %q: table %s: after the replace %d live rows differ from the set's and %d of the set's are missing (a trigger on the table rewrote them?); nothing was changed: restore side by side (mode \"side\") and copy the rows by hand, or disable the trigger",
				j.what, j.db, t, onlyLive, onlySide))
		}
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM ONLY "+t.ident()).Scan(&r.After); err != nil {
			return res, fmt.Errorf("count the rows of %s: %w", t, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if err := tx.Commit(ctx); err != nil {
		return res, fmt.Errorf("commit the replace of %s: %w", j.tableNames(), err)
	}
	res.Replace = time.Since(started)
	for _, t := range j.tables {
		i := slices.IndexFunc(order, func(o liveTable) bool { return o.tableName == t })
		res.Tables = append(res.Tables, *reps[order[i].oid])
	}
	started = time.Now()
	for _, t := range j.tables {
		j.setPhase("analyze", t.String())
		if _, err := live.Exec(ctx, "ANALYZE "+t.ident()); err != nil {
			return res, fmt.Errorf("analyze %s: %w", t, err)
		}
	}
	res.Analyze = time.Since(started)
	return res, nil
}

func withoutGenerated(cols []TableColumn) []TableColumn {
	return slices.DeleteFunc(slices.Clone(cols), func(c TableColumn) bool { return c.Generated })
}

// keyMatch joins l and s on the key columns.
func keyMatch(pk []string) string {
	m := make([]string, len(pk))
	for i, c := range pk {
		q := pgx.Identifier{c}.Sanitize()
		m[i] = "s." + q + " = l." + q
	}
	return strings.Join(m, " AND ")
}

// writeError names the table and the statement of a failed write. A
// constraint refusing the set's rows is permanent: the transaction is rolled
// back and a retry would fail the same way.
func (j *tableJob) writeError(t liveTable, stmt string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "23") {
		return NonRetryable(ErrRestoreFailed, fmt.Errorf("%s in %q: table %s: %s of the set's rows failed: %s (constraint %s); nothing was changed: restore side by side (mode \"side\") and copy the rows by hand",
			j.what, j.db, t, stmt, pgErr.Message, orNone(pgErr.ConstraintName)))
	}
	return fmt.Errorf("%s the set's rows of %s: %w", stmt, t, err)
}

// moveSequence moves seq past the largest value of col in t, never backwards.
func moveSequence(ctx context.Context, tx pgx.Tx, t liveTable, seq, col string) (SequenceReset, error) {
	r := SequenceReset{Sequence: seq, Column: col}
	var top *int64
	if err := tx.QueryRow(ctx, "SELECT max("+pgx.Identifier{col}.Sanitize()+")::bigint FROM ONLY "+t.ident()).Scan(&top); err != nil {
		return r, fmt.Errorf("read the largest %s of %s: %w", col, t, err)
	}
	var called bool
	// seq is regclass::text: quoted and qualified already.
	if err := tx.QueryRow(ctx, "SELECT last_value, is_called FROM "+seq).Scan(&r.From, &called); err != nil {
		return r, fmt.Errorf("read sequence %s of %s: %w", seq, t, err)
	}
	r.To = r.From
	if top != nil && (*top > r.From || *top == r.From && !called) {
		if err := tx.QueryRow(ctx, "SELECT pg_catalog.setval($1::regclass, $2)", seq, *top).Scan(&r.To); err != nil {
			return r, fmt.Errorf("move sequence %s of %s to %d: %w", seq, t, *top, err)
		}
	}
	return r, nil
}

// diffRows counts the rows of a not in b and of b not in a, as multisets over
// cols, compared as text (every type has a text form, not every one equality).
func diffRows(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, a, b string, cols []string) (onlyA, onlyB int64, err error) {
	ra := "SELECT ROW(" + columnList("x.", cols) + ")::text FROM ONLY " + a + " AS x"
	rb := "SELECT ROW(" + columnList("x.", cols) + ")::text FROM ONLY " + b + " AS x"
	err = q.QueryRow(ctx, "SELECT (SELECT count(*) FROM ("+ra+" EXCEPT ALL "+rb+") d), (SELECT count(*) FROM ("+rb+" EXCEPT ALL "+ra+") d)").Scan(&onlyA, &onlyB)
	return onlyA, onlyB, err
}

func (j *tableJob) compare(ctx context.Context) (CompareTablesResult, error) {
	res := CompareTablesResult{Database: j.db, SideSchema: j.side}
	live, err := openConn(ctx, j.dbURL)
	if err != nil {
		return res, err
	}
	defer closeConn(live)
	tables, err := j.resolve(ctx, live)
	if err != nil {
		return res, err
	}
	sides, err := j.sideTables(ctx, live)
	if err != nil {
		return res, err
	}
	for _, t := range tables {
		j.setPhase("compare", t.String())
		c := TableComparison{Table: t.String(), Side: j.side + "." + t.rel}
		for _, col := range t.copyColumns() {
			if slices.ContainsFunc(sides[t.tableName], func(s TableColumn) bool { return s.Name == col }) {
				c.Columns = append(c.Columns, col)
			}
		}
		side := j.sideRel(t.tableName)
		if err := live.QueryRow(ctx, "SELECT (SELECT count(*) FROM ONLY "+t.ident()+"), (SELECT count(*) FROM "+side+")").Scan(&c.LiveRows, &c.SideRows); err != nil {
			return res, fmt.Errorf("count the rows of %s and its side copy: %w", t, err)
		}
		if len(c.Columns) > 0 {
			if c.OnlyLive, c.OnlySide, err = diffRows(ctx, live, t.ident(), side, c.Columns); err != nil {
				return res, fmt.Errorf("compare %s with its side copy: %w", t, err)
			}
		}
		res.Tables = append(res.Tables, c)
	}
	return res, nil
}

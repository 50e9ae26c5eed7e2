package kohakku

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/kohakku/drflow/schemas"
)

// The plan is everything Seed writes, computed in memory from SeedOptions
// alone: same options (Seed and Now included), same plan, byte for byte. It is
// built by one sequential pass over one random stream, so its content does not
// depend on scheduling; brief bodies come from a per-task stream, so they can
// be produced in parallel and again at upload time instead of being kept.

const (
	// historyWindow is how far back the seeded history reaches.
	historyWindow = 7 * 24 * time.Hour
	// containerEpochs is the number of agent fleets over the window, each one
	// replacing the previous (a deploy); the last one is live.
	containerEpochs = 5

	planStream  = 0x6b6f68616b6b75 // "kohakku"
	briefStream = 0x6272696566     // "brief"
	skillStream = 0x736b696c6c     // "skill"
)

type task struct {
	id           int64
	title        string
	repository   string
	branch       string
	skills       []string // skill names
	status       string
	container    string // "" is NULL
	attempt      int32
	progress     int32
	priority     int32
	createdAt    time.Time
	updatedAt    time.Time
	dispatchedAt time.Time // zero is NULL
	startedAt    time.Time // zero is NULL
	finishedAt   time.Time // zero is NULL

	briefTarget int    // wanted brief size; the body may exceed it when small
	briefSize   int64  // actual size of briefBody
	briefSHA256 string // lower-case hex of briefBody
}

type container struct {
	id              string
	host            string
	generation      int64
	status          string
	startedAt       time.Time
	lastHeartbeatAt time.Time
	epoch           int
}

type assignment struct {
	taskID     int64
	container  string
	attempt    int32
	assignedAt time.Time
	releasedAt time.Time // zero is NULL
}

type object struct {
	key         string
	contentType string
	size        int64
	body        func() []byte // builds the bytes; deterministic
}

type plan struct {
	opts        SeedOptions
	tasks       []task
	containers  []container // by generation
	assignments []assignment
	skills      []skill
}

type skill struct {
	name  string
	files []skillFile
}

type skillFile struct {
	name string
	body []byte
}

// planner holds the state of one plan's single pass.
type planner struct {
	rng        *rand.Rand
	now        time.Time
	fleetStart time.Time
	epochLen   time.Duration
	live       int            // containers per fleet
	byEpoch    [][]int        // container indexes per epoch
	indexOf    map[string]int // container id → index in containers
	p          *plan
}

func newPlan(o SeedOptions) *plan {
	p := &plan{opts: o}
	pl := &planner{
		rng:      rand.New(rand.NewPCG(uint64(o.Seed), planStream)),
		now:      o.Now,
		epochLen: (historyWindow / containerEpochs).Truncate(time.Millisecond),
		live:     o.Containers,
		p:        p,
	}
	// The first fleet starts an hour before the first task exists.
	pl.fleetStart = o.Now.Add(-historyWindow - time.Hour)

	pl.makeSkills()
	pl.makeContainers()
	pl.makeTasks()
	pl.finishDeadContainers()
	p.computeBriefs()
	return p
}

// statusMix returns the statuses of n tasks in id order: the oldest three
// quarters are terminal, the newest quarter pending or in flight, each part
// shuffled.
func (pl *planner) statusMix(n int) []string {
	completed, failed, cancelled := n*60/100, n*10/100, n*5/100
	inFlight := n * 10 / 100
	dispatched := inFlight * 3 / 10
	running := inFlight - dispatched
	pending := n - completed - failed - cancelled - inFlight

	repeat := func(out []string, s string, k int) []string {
		for range k {
			out = append(out, s)
		}
		return out
	}
	var old, recent []string
	old = repeat(old, schemas.StatusCompleted, completed)
	old = repeat(old, schemas.StatusFailed, failed)
	old = repeat(old, schemas.StatusCancelled, cancelled)
	recent = repeat(recent, schemas.StatusDispatched, dispatched)
	recent = repeat(recent, schemas.StatusRunning, running)
	recent = repeat(recent, schemas.StatusPending, pending)
	pl.rng.Shuffle(len(old), func(i, j int) { old[i], old[j] = old[j], old[i] })
	pl.rng.Shuffle(len(recent), func(i, j int) { recent[i], recent[j] = recent[j], recent[i] })
	return append(old, recent...)
}

// between returns a duration in [lo, hi], in whole milliseconds.
func (pl *planner) between(lo, hi time.Duration) time.Duration {
	span := int64((hi - lo) / time.Millisecond)
	if span <= 0 {
		return lo
	}
	return lo + time.Duration(pl.rng.Int64N(span+1))*time.Millisecond
}

func (pl *planner) percent(p int) bool { return pl.rng.IntN(100) < p }

func (pl *planner) pick(list []string) string { return list[pl.rng.IntN(len(list))] }

func (pl *planner) makeSkills() {
	seen := map[string]bool{}
	for i := range pl.p.opts.Skills {
		name := skillNames[i%len(skillNames)]
		if i >= len(skillNames) {
			name += "-" + strconv.Itoa(i/len(skillNames)+1)
		}
		for seen[name] { // cannot happen with the scheme above; keeps names unique regardless
			name += "-x"
		}
		seen[name] = true
		sk := skill{name: name}
		files := []string{schemas.SkillFileName}
		if i%3 == 0 {
			files = append(files, "reference.md")
		}
		if i%4 == 1 {
			files = append(files, "scripts/run.sh")
		}
		for j, f := range files {
			size := 512 + pl.rng.IntN(3584)
			sk.files = append(sk.files, skillFile{name: f, body: skillBody(pl.p.opts.Seed, i, j, name, f, size)})
		}
		pl.p.skills = append(pl.p.skills, sk)
	}
}

func (pl *planner) makeContainers() {
	seen := map[string]bool{}
	pl.byEpoch = make([][]int, containerEpochs)
	pl.indexOf = map[string]int{}
	for e := range containerEpochs {
		epochStart := pl.fleetStart.Add(time.Duration(e) * pl.epochLen)
		for k := range pl.live {
			var id string
			for id == "" || seen[id] {
				id = fmt.Sprintf("agent-%012x", pl.rng.Uint64()&0xffffffffffff)
			}
			seen[id] = true
			c := container{
				id:         id,
				host:       fmt.Sprintf("agent-host-%02d", k/2+1),
				generation: int64(e*pl.live + k + 1),
				status:     schemas.ContainerDead,
				// A rollout: each container starts up to 10 minutes before its
				// fleet takes over.
				startedAt: epochStart.Add(-pl.between(0, 10*time.Minute)),
				epoch:     e,
			}
			if e == containerEpochs-1 {
				c.status = schemas.ContainerLive
				c.lastHeartbeatAt = pl.now.Add(-pl.between(0, 5*time.Second))
			} else {
				// Finished in finishDeadContainers, once its work is known.
				c.lastHeartbeatAt = epochStart.Add(pl.epochLen - pl.between(0, time.Minute))
			}
			pl.byEpoch[e] = append(pl.byEpoch[e], len(pl.p.containers))
			pl.indexOf[id] = len(pl.p.containers)
			pl.p.containers = append(pl.p.containers, c)
		}
	}
}

// containerAt picks a container of the fleet serving at time t.
func (pl *planner) containerAt(t time.Time) string {
	e := int(t.Sub(pl.fleetStart) / pl.epochLen)
	e = max(0, min(e, containerEpochs-1))
	return pl.p.containers[pl.byEpoch[e][pl.rng.IntN(pl.live)]].id
}

// lostContainer picks a dead container for an attempt lost with its agent.
func (pl *planner) lostContainer(t time.Time) string {
	e := int(t.Sub(pl.fleetStart) / pl.epochLen)
	e = max(0, min(e, containerEpochs-2))
	return pl.p.containers[pl.byEpoch[e][pl.rng.IntN(pl.live)]].id
}

func (pl *planner) liveContainer() string {
	return pl.p.containers[pl.byEpoch[containerEpochs-1][pl.rng.IntN(pl.live)]].id
}

// lostAttempts records attempts 1..n, each dispatched to an agent that was then
// lost, and returns when the last one was released.
func (pl *planner) lostAttempts(t *task, n int, from time.Time) time.Time {
	cur := from
	for a := 1; a <= n; a++ {
		at := cur.Add(pl.between(time.Second, 10*time.Minute))
		rel := at.Add(pl.between(10*time.Second, 20*time.Minute))
		pl.p.assignments = append(pl.p.assignments, assignment{
			taskID: t.id, container: pl.lostContainer(at), attempt: int32(a),
			assignedAt: at, releasedAt: rel,
		})
		cur = rel
	}
	return cur
}

func (pl *planner) makeTasks() {
	n := pl.p.opts.Tasks
	statuses := pl.statusMix(n)
	pl.p.tasks = make([]task, n)
	start := pl.now.Add(-historyWindow)
	step := (historyWindow / time.Duration(n)).Truncate(time.Millisecond)

	// Tasks arrive in bursts of 1–4 submitted together (same created_at and
	// priority), so dispatch order needs its id tie-break.
	for i := 0; i < n; {
		burst := min(1+pl.rng.IntN(4), n-i)
		at := start.Add(time.Duration(i) * step).Add(pl.between(0, step/2))
		prio := int32(0)
		switch r := pl.rng.IntN(100); {
		case r < 5:
			prio = 50
		case r < 25:
			prio = 10
		}
		for j := range burst {
			t := &pl.p.tasks[i+j]
			t.id = int64(i + j + 1)
			t.createdAt = at
			t.priority = prio
		}
		i += burst
	}

	for i := range pl.p.tasks {
		t := &pl.p.tasks[i]
		t.status = statuses[i]
		t.repository = "kohakku/" + pl.pick(repositories)
		t.branch = "main"
		if pl.percent(40) {
			t.branch = "feature/" + pl.pick(branchTopics) + "-" + strconv.Itoa(100+pl.rng.IntN(900))
		}
		t.title = fmt.Sprintf("%s %s in %s", pl.pick(titleVerbs), pl.pick(titleObjects), t.repository[len("kohakku/"):])
		if k := len(pl.p.skills); k > 0 {
			for _, idx := range pl.rng.Perm(k)[:pl.rng.IntN(min(3, k)+1)] {
				t.skills = append(t.skills, pl.p.skills[idx].name)
			}
			slices.Sort(t.skills)
		}
		if mean := pl.p.opts.BriefSize; mean > 0 {
			t.briefTarget = mean/2 + pl.rng.IntN(mean+1)
		}
		pl.timeline(t)
	}
}

// timeline fills a task's attempts, container, progress and timestamps for its
// status, and records its assignments.
func (pl *planner) timeline(t *task) {
	// Enough history before now for a lost attempt to fit.
	oldEnough := t.createdAt.Before(pl.now.Add(-2 * time.Hour))
	switch t.status {
	case schemas.StatusPending:
		// Some were dispatched once and re-queued after their agent was lost.
		if oldEnough && pl.percent(10) {
			t.attempt = 1
		}
		t.updatedAt = maxTime(t.createdAt, pl.lostAttempts(t, int(t.attempt), t.createdAt))

	case schemas.StatusDispatched, schemas.StatusRunning:
		t.attempt = 1
		if oldEnough && pl.percent(7) {
			t.attempt = 2
		}
		free := pl.lostAttempts(t, int(t.attempt)-1, t.createdAt)
		d := pl.now.Add(-pl.between(time.Second, 30*time.Minute))
		if d.Before(free) {
			d = free.Add(pl.now.Sub(free) / 2).Truncate(time.Millisecond)
		}
		t.dispatchedAt = d
		t.container = pl.liveContainer()
		t.updatedAt = d
		if t.status == schemas.StatusRunning {
			t.startedAt = minTime(d.Add(pl.between(time.Second, 10*time.Second)), pl.now)
			t.progress = int32(1 + pl.rng.IntN(99))
			t.updatedAt = maxTime(t.startedAt, pl.now.Add(-pl.between(0, time.Minute)))
		}
		pl.p.assignments = append(pl.p.assignments, assignment{
			taskID: t.id, container: t.container, attempt: t.attempt, assignedAt: d,
		})

	default: // terminal
		switch {
		case t.status == schemas.StatusCancelled && pl.percent(40):
			// Cancelled before it was ever dispatched.
			t.finishedAt = t.createdAt.Add(pl.between(time.Minute, 2*time.Hour))
			t.updatedAt = t.finishedAt
			return
		case t.status == schemas.StatusFailed:
			t.attempt = int32(1 + pl.rng.IntN(3))
		case t.status == schemas.StatusCompleted:
			t.attempt = 1
			if r := pl.rng.IntN(100); r < 2 {
				t.attempt = 3
			} else if r < 10 {
				t.attempt = 2
			}
		default:
			t.attempt = 1
		}
		free := pl.lostAttempts(t, int(t.attempt)-1, t.createdAt)
		t.dispatchedAt = free.Add(pl.between(time.Second, 10*time.Minute))
		t.container = pl.containerAt(t.dispatchedAt)
		t.startedAt = t.dispatchedAt.Add(pl.between(time.Second, 10*time.Second))
		t.finishedAt = t.startedAt.Add(pl.between(30*time.Second, 90*time.Minute))
		if t.finishedAt.After(pl.now) { // only for a tiny window; keeps history in the past
			t.finishedAt = pl.now
			t.startedAt = minTime(t.startedAt, t.finishedAt)
			t.dispatchedAt = minTime(t.dispatchedAt, t.startedAt)
		}
		t.updatedAt = t.finishedAt
		switch t.status {
		case schemas.StatusCompleted:
			t.progress = 100
		default:
			t.progress = int32(pl.rng.IntN(100))
		}
		pl.p.assignments = append(pl.p.assignments, assignment{
			taskID: t.id, container: t.container, attempt: t.attempt,
			assignedAt: t.dispatchedAt, releasedAt: t.finishedAt,
		})
	}
}

// finishDeadContainers makes each dead container's last heartbeat no earlier
// than the last release of a task it held.
func (pl *planner) finishDeadContainers() {
	for _, a := range pl.p.assignments {
		c := &pl.p.containers[pl.indexOf[a.container]]
		if c.status == schemas.ContainerDead && a.releasedAt.After(c.lastHeartbeatAt) {
			c.lastHeartbeatAt = a.releasedAt
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// computeBriefs sets every task's brief size and SHA-256, in parallel.
func (p *plan) computeBriefs() {
	workers := runtime.GOMAXPROCS(0)
	chunk := (len(p.tasks) + workers - 1) / workers
	var wg sync.WaitGroup
	for lo := 0; lo < len(p.tasks); lo += chunk {
		hi := min(lo+chunk, len(p.tasks))
		wg.Go(func() {
			for i := lo; i < hi; i++ {
				t := &p.tasks[i]
				b := p.briefBody(t)
				sum := sha256.Sum256(b)
				t.briefSize = int64(len(b))
				t.briefSHA256 = hex.EncodeToString(sum[:])
			}
		})
	}
	wg.Wait()
}

// briefDoc is the JSON document stored at schemas.BriefKey(taskId).
type briefDoc struct {
	TaskID       int64    `json:"taskId"`
	Title        string   `json:"title"`
	Repository   string   `json:"repository"`
	Branch       string   `json:"branch"`
	Priority     int32    `json:"priority"`
	CreatedAt    string   `json:"createdAt"`
	Skills       []string `json:"skills"` // object keys of each skill's SKILL.md
	Instructions string   `json:"instructions"`
}

// briefBody is task t's brief: JSON of t.briefTarget bytes (more when the
// fixed fields alone are longer). It depends only on the seed and t.
func (p *plan) briefBody(t *task) []byte {
	doc := briefDoc{
		TaskID:     t.id,
		Title:      t.title,
		Repository: t.repository,
		Branch:     t.branch,
		Priority:   t.priority,
		CreatedAt:  t.createdAt.UTC().Format(time.RFC3339Nano),
		Skills:     []string{},
	}
	for _, s := range t.skills {
		doc.Skills = append(doc.Skills, schemas.SkillKey(s, schemas.SkillFileName))
	}
	b, err := json.Marshal(doc)
	if err != nil {
		panic(err) // plain strings and numbers: cannot fail
	}
	if fill := t.briefTarget - len(b); fill > 0 {
		// filler is lower-case ASCII, spaces and full stops: its JSON
		// encoding is as long as it is, so the body is exactly briefTarget.
		rng := rand.New(rand.NewPCG(uint64(p.opts.Seed)^briefStream, uint64(t.id)))
		doc.Instructions = filler(rng, fill)
		if b, err = json.Marshal(doc); err != nil {
			panic(err)
		}
	}
	return b
}

// payload is tasks_task.payload.
func (t *task) payload() json.RawMessage {
	b, err := json.Marshal(struct {
		Repository string   `json:"repository"`
		Branch     string   `json:"branch"`
		Skills     []string `json:"skills"`
	}{t.repository, t.branch, append([]string{}, t.skills...)})
	if err != nil {
		panic(err)
	}
	return b
}

// skillBody is file j of skill number index: about size bytes of text.
func skillBody(seed int64, index, j int, name, file string, size int) []byte {
	rng := rand.New(rand.NewPCG(uint64(seed)^skillStream, uint64(index)<<8|uint64(j)))
	var head string
	switch file {
	case schemas.SkillFileName:
		head = fmt.Sprintf("---\nname: %s\ndescription: %s\n---\n\n# %s\n\n", name, filler(rng, 80), name)
	case "scripts/run.sh":
		head = fmt.Sprintf("#!/bin/sh\n# %s: run the %s helper\nset -eu\n", file, name)
	default:
		head = fmt.Sprintf("# %s reference\n\n", name)
	}
	return []byte(head + filler(rng, max(0, size-len(head))) + "\n")
}

// filler returns exactly n bytes of word-like text: [a-z .].
func filler(rng *rand.Rand, n int) string {
	b := make([]byte, 0, n+16)
	for len(b) < n {
		if len(b) > 0 {
			if rng.IntN(12) == 0 {
				b = append(b, '.')
			}
			b = append(b, ' ')
		}
		b = append(b, fillerWords[rng.IntN(len(fillerWords))]...)
	}
	return string(b[:n])
}

// plan figures.

func (p *plan) objects() []object {
	var out []object
	for _, s := range p.skills {
		for _, f := range s.files {
			body := f.body
			ct := "text/markdown"
			if f.name == "scripts/run.sh" {
				ct = "text/x-shellscript"
			}
			out = append(out, object{
				key: schemas.SkillKey(s.name, f.name), contentType: ct, size: int64(len(body)),
				body: func() []byte { return body },
			})
		}
	}
	for i := range p.tasks {
		t := &p.tasks[i]
		out = append(out, object{
			key: schemas.BriefKey(t.id), contentType: "application/json", size: t.briefSize,
			body: func() []byte { return p.briefBody(t) },
		})
	}
	return out
}

// pendingInDispatchOrder returns the ids of the pending tasks in dispatch order
// (schemas.DispatchOrderSQL).
func (p *plan) pendingInDispatchOrder() []int64 {
	var pending []*task
	for i := range p.tasks {
		if p.tasks[i].status == schemas.StatusPending {
			pending = append(pending, &p.tasks[i])
		}
	}
	slices.SortFunc(pending, func(a, b *task) int {
		return cmp.Or(
			cmp.Compare(b.priority, a.priority),
			a.createdAt.Compare(b.createdAt),
			cmp.Compare(a.id, b.id),
		)
	})
	ids := make([]int64, len(pending))
	for i, t := range pending {
		ids[i] = t.id
	}
	return ids
}

func (p *plan) summary() Summary {
	s := newSummary()
	s.Tasks = len(p.tasks)
	s.BriefRows = len(p.tasks)
	s.Briefs = len(p.tasks)
	for _, t := range p.tasks {
		s.ByStatus[t.status]++
		if !schemas.IsTerminal(t.status) {
			s.TaskHashes++
		}
		s.Bytes += t.briefSize
	}
	s.PendingQueued = s.ByStatus[schemas.StatusPending]
	for _, c := range p.containers {
		if c.status == schemas.ContainerLive {
			s.Containers++
		} else {
			s.DeadContainers++
		}
	}
	s.LiveContainers = s.Containers
	s.Assignments = len(p.assignments)
	for _, a := range p.assignments {
		if a.releasedAt.IsZero() {
			s.OpenAssignments++
		}
	}
	s.Skills = len(p.skills)
	s.Objects = len(p.tasks)
	for _, sk := range p.skills {
		for _, f := range sk.files {
			s.Objects++
			s.Bytes += int64(len(f.body))
		}
	}
	return s
}

var (
	skillNames = []string{
		"git-rebase", "pytest-runner", "go-test", "sql-migration", "docker-build",
		"terraform-plan", "log-triage", "api-client", "code-review", "release-notes",
		"k8s-rollout", "flaky-test-hunter", "dependency-bump", "perf-profile",
		"security-audit", "schema-diff", "frontend-lint", "data-backfill",
		"incident-summary", "doc-writer", "changelog", "benchmark", "i18n-extract",
		"openapi-sync",
	}
	repositories = []string{
		"controller", "dispatcher", "monitor", "web", "agent", "billing-api",
		"search", "notifications", "auth", "reports",
	}
	branchTopics = []string{"retry", "cache", "timeouts", "ui", "queue", "metrics", "auth", "export"}
	titleVerbs   = []string{
		"Fix", "Refactor", "Add tests for", "Document", "Speed up", "Investigate",
		"Upgrade", "Remove", "Port", "Review",
	}
	titleObjects = []string{
		"the retry loop", "flaky integration test", "CSV export", "rate limiter",
		"login redirect", "nightly report", "webhook handler", "pagination",
		"cache invalidation", "database migration", "error messages", "the search index",
	}
	fillerWords = []string{
		"agent", "brief", "task", "review", "change", "test", "module", "service",
		"request", "handler", "retry", "queue", "update", "the", "a", "of", "and",
		"to", "with", "when", "should", "must", "check", "ensure", "file", "config",
		"error", "log", "metric", "branch", "commit", "build", "deploy", "run", "step",
		"output", "input", "value", "field", "table", "index", "cache", "timeout",
	}
)

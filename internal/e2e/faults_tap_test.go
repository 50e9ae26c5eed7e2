//go:build faults

package e2e

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	tokenspb "go.temporal.io/server/api/token/v1"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"
)

// grpcTap is a TCP proxy between the worker subprocess and Temporal's frontend. It reads
// the worker's gRPC calls as they pass (HTTP/2 frames, HPACK headers, the protobuf
// messages of a few WorkflowService methods) and uses them to stop the worker at exact
// points, which watching the history from outside cannot do: by the time an
// ActivityTaskCompleted event can be read, the worker has often picked up the next task,
// and a kill then costs that task's heartbeat timeout instead of a workflow task timeout.
//
// A kill point is decided here, synchronously, as the call passes:
//   - step boundary: the worker reports an activity (or a child workflow) completed. The
//     tap freezes — nothing more reaches the worker, nothing more of the worker's reaches
//     the server — forwards the report, and asks for the kill once the server has
//     answered it, so the completion is recorded and nothing after it was seen.
//   - mid-activity: a long activity's task reached the worker. Half as long later as the
//     same activity took in the uninterrupted run (or at its first heartbeat when that is
//     unknown), or when it reports its result if that comes first (the report is then
//     held back, so for the server the activity never finished), the tap freezes and asks
//     for the kill. An activity armed for an external trigger dies when the test calls
//     killRunning (or, failing that, with its result held back).
//
// Freezing also stops the worker process (SIGSTOP), so the point is exact: it does no
// more work between the decision and the SIGKILL.
//
// A boundary is not killed when another activity running in the worker would die with it
// a second time, or is not a long activity: that kill would cost the other activity a
// heartbeat timeout and test nothing the kill that already hit it did not. The tap
// reports such boundaries as notes.
//
// contract: the controller (crashHarness) receives each killReq on kills, waits for ack,
// SIGKILLs the worker and calls reset; or calls thaw when ack reports the server
// rejected the call. At most one killReq is outstanding: the tap stays frozen until then.
type grpcTap struct {
	l        net.Listener
	upstream string
	kills    chan *killReq
	notes    chan tapNote
	// pid is the worker's process: frozen with SIGSTOP the moment a kill point is
	// reached, so it neither works on nor reacts until the SIGKILL.
	pid atomic.Int64

	mu     sync.Mutex
	cond   *sync.Cond
	policy tapPolicy
	armed  bool
	frozen bool
	conns  map[*tapConn]bool
	// inflight: activity tasks delivered to the worker and not answered yet.
	inflight map[taskKey]*taskInfo
	// hit: activity instances that were running in the worker at a kill (the kill number).
	hit map[taskKey]int
	// midArmed: mid-activity kill timers not fired yet; midTried: instances already given
	// their mid-activity kill (or its attempt).
	midArmed map[taskKey]*time.Timer // nil timer: at the first heartbeat, or external
	midMode  map[taskKey]int
	midTried map[taskKey]bool
	// ranks: the scheduled event ids seen per workflow run and activity type.
	ranks   map[string][]int64
	killNo  int
	pending *killReq
	err     error
}

// tapPolicy says which run the tap is breaking and which activities are long.
type tapPolicy struct {
	// root is the workflow id of the run: completions of other workflows of the same tree
	// are child completions.
	root string
	// long reports whether an activity of a workflow type gets a mid-activity kill.
	long func(workflowType, activityType string) bool
	// midway says when a long activity dies: midTimer, d after its task reached the
	// worker (half its uninterrupted run); midHeartbeat, with its first heartbeat (when
	// that is unknown); midExternal, when the test calls killRunning.
	midway func(taskInfo) (d time.Duration, mode int)
}

// Modes of tapPolicy.midway.
const (
	midTimer = iota
	midHeartbeat
	midExternal
)

// taskKey names one activity instance (all its attempts).
type taskKey struct {
	WorkflowID, RunID string
	Scheduled         int64
}

type taskInfo struct {
	key          taskKey
	workflowType string
	activityType string
	// nth: this activity's rank among the activities of its type in its workflow run, by
	// scheduling order (as far as the tap has seen them).
	nth        int
	attempt    int32
	delivered  time.Time
	heartbeats int
}

// Kinds of kill point.
const (
	killActivityDone = "ActivityTaskCompleted"
	killChildDone    = "ChildWorkflowExecutionCompleted"
	killMidActivity  = "mid-activity"
)

// killReq asks the controller to SIGKILL the worker.
type killReq struct {
	kind string
	// task is the activity that completed or is killed mid-way (kind != killChildDone).
	task taskInfo
	// child is the workflow id and run id of the child that completed (killChildDone).
	child taskKey
	// inflight are the other activity tasks running in the worker: they die too.
	inflight []taskInfo
	// detail says where in the activity a mid-activity kill landed.
	detail string
	at     time.Time
	// ack receives the gRPC status of the triggering call once the server answered it
	// ("0" = recorded); mid-activity kills get "0" at once.
	ack chan string
}

// tapNote is a boundary the tap let pass, and why.
type tapNote struct {
	kind   string
	task   taskInfo
	child  taskKey
	reason string
	at     time.Time
}

const workflowService = "/temporal.api.workflowservice.v1.WorkflowService/"

// Methods whose messages the tap reads.
var (
	tapRequests = map[string]bool{
		workflowService + "RespondActivityTaskCompleted": true,
		workflowService + "RespondActivityTaskFailed":    true,
		workflowService + "RespondActivityTaskCanceled":  true,
		workflowService + "RecordActivityTaskHeartbeat":  true,
		workflowService + "RespondWorkflowTaskCompleted": true,
	}
	tapResponses = map[string]bool{
		workflowService + "PollActivityTaskQueue":        true,
		workflowService + "RespondWorkflowTaskCompleted": true, // eager activity tasks
	}
)

func newGRPCTap(upstream string) (*grpcTap, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	tp := &grpcTap{
		l: l, upstream: upstream,
		kills: make(chan *killReq, 1), notes: make(chan tapNote, 1000),
		conns: map[*tapConn]bool{}, inflight: map[taskKey]*taskInfo{}, hit: map[taskKey]int{},
		midArmed: map[taskKey]*time.Timer{}, midMode: map[taskKey]int{}, midTried: map[taskKey]bool{}, ranks: map[string][]int64{},
	}
	tp.cond = sync.NewCond(&tp.mu)
	go tp.accept()
	return tp, nil
}

func (tp *grpcTap) addr() string { return tp.l.Addr().String() }

func (tp *grpcTap) close() {
	_ = tp.l.Close()
	tp.mu.Lock()
	defer tp.mu.Unlock()
	tp.armed = false
	tp.stopTimers()
	for c := range tp.conns {
		c.close()
	}
	tp.frozen = false
	tp.cond.Broadcast()
}

// arm starts breaking the run p names; disarm stops (and thaws).
func (tp *grpcTap) arm(p tapPolicy) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	tp.policy, tp.armed = p, true
}

func (tp *grpcTap) disarm() {
	tp.mu.Lock()
	tp.armed = false
	tp.stopTimers()
	tp.mu.Unlock()
	tp.thaw()
}

// failure is the first error the tap met (a frame it could not read).
func (tp *grpcTap) failure() error {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.err
}

func (tp *grpcTap) stopTimers() {
	for k, tm := range tp.midArmed {
		if tm != nil {
			tm.Stop()
		}
		delete(tp.midArmed, k)
	}
}

// thaw lets traffic through again after a kill request the controller dropped.
func (tp *grpcTap) thaw() {
	tp.mu.Lock()
	if tp.frozen {
		if pid := int(tp.pid.Load()); pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	tp.frozen = false
	tp.pending = nil
	conns := make([]*tapConn, 0, len(tp.conns))
	for c := range tp.conns {
		conns = append(conns, c)
	}
	tp.cond.Broadcast()
	tp.mu.Unlock()
	for _, c := range conns {
		c.flush()
	}
}

// reset follows a SIGKILL: every connection of the dead worker is closed (so the server
// drops its polls at once), and every task it was running is marked as hit by kill n.
func (tp *grpcTap) reset(n int) (dead []taskInfo) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	for c := range tp.conns {
		c.close()
		delete(tp.conns, c)
	}
	for k, ti := range tp.inflight {
		tp.hit[k] = n
		dead = append(dead, *ti)
		delete(tp.inflight, k)
	}
	for k, tm := range tp.midArmed {
		if tm != nil {
			tm.Stop()
		}
		delete(tp.midArmed, k)
		tp.midTried[k] = true
	}
	tp.killNo = n
	tp.frozen = false
	tp.pending = nil
	tp.cond.Broadcast()
	sort.Slice(dead, func(i, j int) bool { return dead[i].delivered.Before(dead[j].delivered) })
	return dead
}

// othersKillable reports whether the worker may die now without killing an activity a
// second time or a short one: every activity running besides except is long and has not
// been hit by a kill yet. Called with mu held.
func (tp *grpcTap) othersKillable(except taskKey) (bool, string) {
	for k, ti := range tp.inflight {
		if k == except {
			continue
		}
		if n, ok := tp.hit[k]; ok {
			return false, fmt.Sprintf("%s was still running, already killed mid-activity at #%d", ti.activityType, n)
		}
		if !tp.policy.long(ti.workflowType, ti.activityType) {
			return false, fmt.Sprintf("%s (short, not killed mid-activity) was still running", ti.activityType)
		}
	}
	return true, ""
}

func (tp *grpcTap) others(except taskKey) []taskInfo {
	var out []taskInfo
	for k, ti := range tp.inflight {
		if k != except {
			out = append(out, *ti)
		}
	}
	return out
}

// freeze stops all traffic and hands r to the controller. Called with mu held.
func (tp *grpcTap) freeze(r *killReq) {
	if pid := int(tp.pid.Load()); pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGSTOP)
	}
	// Cancel the worker's open polls at the server, before the triggering call goes
	// through: the workflow task that call schedules must not be handed to the dying
	// worker (it would wait out the 10 s workflow task timeout; on the sticky queue with
	// no poller it waits 5 s).
	for c := range tp.conns {
		c.cancelPolls()
	}
	tp.frozen = true
	tp.pending = r
	r.at = time.Now()
	tp.kills <- r // buffered: at most one request is outstanding while frozen
}

func (tp *grpcTap) note(n tapNote) {
	n.at = time.Now()
	select {
	case tp.notes <- n:
	default:
	}
}

// tapAction is what the connection does with the frame that completed a request.
type tapAction struct {
	// trigger: this frame froze the tap and goes through anyway (the server must record
	// it); every other frame waits while the tap is frozen — a held-back completion dies
	// there with the worker.
	trigger bool
}

// onRequest sees a complete request of the worker. Runs on the client reader of c.
func (tp *grpcTap) onRequest(c *tapConn, stream uint32, method string, body []byte) tapAction {
	var pass tapAction
	name := strings.TrimPrefix(method, workflowService)
	switch name {
	case "RespondActivityTaskCompleted", "RespondActivityTaskFailed", "RespondActivityTaskCanceled", "RecordActivityTaskHeartbeat":
		var token []byte
		switch name {
		case "RespondActivityTaskCompleted":
			var m workflowservice.RespondActivityTaskCompletedRequest
			if tp.decode(body, &m) {
				token = m.GetTaskToken()
			}
		case "RespondActivityTaskFailed":
			var m workflowservice.RespondActivityTaskFailedRequest
			if tp.decode(body, &m) {
				token = m.GetTaskToken()
			}
		case "RespondActivityTaskCanceled":
			var m workflowservice.RespondActivityTaskCanceledRequest
			if tp.decode(body, &m) {
				token = m.GetTaskToken()
			}
		case "RecordActivityTaskHeartbeat":
			var m workflowservice.RecordActivityTaskHeartbeatRequest
			if tp.decode(body, &m) {
				token = m.GetTaskToken()
			}
		}
		var tok tokenspb.Task
		if token == nil || !tp.decode(token, &tok) {
			return pass
		}
		key := taskKey{tok.GetWorkflowId(), tok.GetRunId(), tok.GetScheduledEventId()}
		tp.mu.Lock()
		defer tp.mu.Unlock()
		ti := tp.inflight[key]
		if ti == nil {
			ti = &taskInfo{key: key, workflowType: tok.GetWorkflowType(), activityType: tok.GetActivityType(), attempt: tok.GetAttempt()}
		}
		tm, midPending := tp.midArmed[key]
		if name == "RecordActivityTaskHeartbeat" {
			ti.heartbeats++
			if !midPending || tp.midMode[key] != midHeartbeat || !tp.armed || tp.frozen {
				return pass
			}
			// No known midpoint: the first heartbeat is the middle. It goes through, so
			// the retry sees the progress it recorded.
			if ok, why := tp.othersKillable(key); !ok {
				delete(tp.midArmed, key)
				tp.note(tapNote{kind: killMidActivity, task: *ti, reason: "not killed mid-activity: " + why})
				return pass
			}
			delete(tp.midArmed, key)
			r := &killReq{kind: killMidActivity, task: *ti, inflight: tp.others(key), ack: make(chan string, 1),
				detail: fmt.Sprintf("%s in, right after its first heartbeat", time.Since(ti.delivered).Round(time.Millisecond))}
			c.awaitAnswer(stream, r.ack)
			tp.freeze(r)
			return tapAction{trigger: true}
		}
		delete(tp.midArmed, key)
		if tm != nil {
			tm.Stop()
		}
		if name != "RespondActivityTaskCompleted" {
			delete(tp.inflight, key) // a failed attempt is retried: its mid-activity kill stays due
			if midPending {
				delete(tp.midTried, key)
			}
			return pass
		}
		if !tp.armed || tp.frozen {
			delete(tp.inflight, key)
			return pass
		}
		ok, why := tp.othersKillable(key)
		if midPending {
			if !ok {
				delete(tp.inflight, key)
				tp.note(tapNote{kind: killMidActivity, task: *ti, reason: "not killed mid-activity: " + why})
				tp.note(tapNote{kind: killActivityDone, task: *ti, reason: why})
				return pass
			}
			// The activity finished before its midpoint: it dies with its work done and its
			// result not reported, which for the server is the middle of the activity.
			tp.freeze(&killReq{kind: killMidActivity, task: *ti, inflight: tp.others(key),
				detail: fmt.Sprintf("its work done after %s, the completion held back", time.Since(ti.delivered).Round(time.Millisecond)),
				ack:    closedAck()})
			return pass
		}
		delete(tp.inflight, key)
		if !ok {
			tp.note(tapNote{kind: killActivityDone, task: *ti, reason: why})
			return pass
		}
		r := &killReq{kind: killActivityDone, task: *ti, inflight: tp.others(key), ack: make(chan string, 1)}
		c.awaitAnswer(stream, r.ack)
		tp.freeze(r)
		return tapAction{trigger: true}

	case "RespondWorkflowTaskCompleted":
		var m workflowservice.RespondWorkflowTaskCompletedRequest
		if !tp.decode(body, &m) {
			return pass
		}
		completes := false
		for _, cmd := range m.GetCommands() {
			if cmd.GetCommandType() == enumspb.COMMAND_TYPE_COMPLETE_WORKFLOW_EXECUTION {
				completes = true
			}
		}
		var tok tokenspb.Task
		if !completes || !tp.decode(m.GetTaskToken(), &tok) {
			return pass
		}
		tp.mu.Lock()
		defer tp.mu.Unlock()
		if !tp.armed || tp.frozen || tok.GetWorkflowId() == tp.policy.root {
			return pass
		}
		child := taskKey{WorkflowID: tok.GetWorkflowId(), RunID: tok.GetRunId()}
		if ok, why := tp.othersKillable(taskKey{}); !ok {
			tp.note(tapNote{kind: killChildDone, child: child, reason: why})
			return pass
		}
		r := &killReq{kind: killChildDone, child: child, inflight: tp.others(taskKey{}), ack: make(chan string, 1)}
		c.awaitAnswer(stream, r.ack)
		tp.freeze(r)
		return tapAction{trigger: true}
	}
	return pass
}

// onResponse sees a complete response message of the server. Runs on the server reader.
func (tp *grpcTap) onResponse(method string, msg []byte) {
	var tasks []*workflowservice.PollActivityTaskQueueResponse
	switch strings.TrimPrefix(method, workflowService) {
	case "PollActivityTaskQueue":
		var m workflowservice.PollActivityTaskQueueResponse
		if tp.decode(msg, &m) {
			tasks = append(tasks, &m)
		}
	case "RespondWorkflowTaskCompleted":
		var m workflowservice.RespondWorkflowTaskCompletedResponse
		if tp.decode(msg, &m) {
			tasks = append(tasks, m.GetActivityTasks()...)
		}
	}
	for _, task := range tasks {
		var tok tokenspb.Task
		if len(task.GetTaskToken()) == 0 || !tp.decode(task.GetTaskToken(), &tok) {
			continue
		}
		key := taskKey{tok.GetWorkflowId(), tok.GetRunId(), tok.GetScheduledEventId()}
		ti := &taskInfo{key: key, workflowType: task.GetWorkflowType().GetName(), activityType: task.GetActivityType().GetName(),
			attempt: task.GetAttempt(), delivered: time.Now()}
		tp.mu.Lock()
		rk := key.WorkflowID + "/" + key.RunID + "/" + ti.activityType
		if !slices.Contains(tp.ranks[rk], key.Scheduled) {
			tp.ranks[rk] = append(tp.ranks[rk], key.Scheduled)
			slices.Sort(tp.ranks[rk])
		}
		ti.nth = slices.Index(tp.ranks[rk], key.Scheduled)
		tp.inflight[key] = ti
		if _, hit := tp.hit[key]; tp.armed && !hit && !tp.midTried[key] && tp.policy.long(ti.workflowType, ti.activityType) {
			tp.midTried[key] = true
			var tm *time.Timer
			d, mode := tp.policy.midway(*ti)
			if mode == midTimer {
				tm = time.AfterFunc(d, func() { tp.fireMid(key) })
			}
			tp.midArmed[key], tp.midMode[key] = tm, mode
		}
		tp.mu.Unlock()
	}
}

// fireMid kills the worker in the middle of a long activity, unless that would hit
// another activity a second time; then it tries again shortly.
func (tp *grpcTap) fireMid(key taskKey) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if _, ok := tp.midArmed[key]; !ok {
		return // answered or reset meanwhile
	}
	delete(tp.midArmed, key)
	ti := tp.inflight[key]
	if !tp.armed || ti == nil {
		return
	}
	if tp.frozen {
		return // a kill is on its way and takes this activity with it
	}
	if ok, _ := tp.othersKillable(key); !ok {
		tp.midArmed[key] = time.AfterFunc(50*time.Millisecond, func() { tp.fireMid(key) })
		return
	}
	detail := fmt.Sprintf("%s in (half its uninterrupted run)", time.Since(ti.delivered).Round(time.Millisecond))
	if ti.heartbeats > 0 {
		detail += fmt.Sprintf(", after %d heartbeat(s)", ti.heartbeats)
	}
	tp.freeze(&killReq{kind: killMidActivity, task: *ti, inflight: tp.others(key), detail: detail, ack: closedAck()})
}

// killRunning kills the worker now, in the middle of the running activity of type
// activityType armed for an external trigger: the test saw it reach a point of
// interest, described by detail. False when no such activity runs or the tap is busy.
func (tp *grpcTap) killRunning(activityType, detail string) bool {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if !tp.armed || tp.frozen {
		return false
	}
	for key, ti := range tp.inflight {
		if _, armed := tp.midArmed[key]; !armed || ti.activityType != activityType || tp.midMode[key] != midExternal {
			continue
		}
		if ok, _ := tp.othersKillable(key); !ok {
			return false
		}
		delete(tp.midArmed, key)
		tp.freeze(&killReq{kind: killMidActivity, task: *ti, inflight: tp.others(key), ack: closedAck(),
			detail: fmt.Sprintf("%s in, %s", time.Since(ti.delivered).Round(time.Millisecond), detail)})
		return true
	}
	return false
}

func closedAck() chan string {
	c := make(chan string, 1)
	c <- "0"
	return c
}

func (tp *grpcTap) decode(b []byte, m proto.Message) bool {
	if err := proto.Unmarshal(b, m); err != nil {
		tp.fail(fmt.Errorf("decode %T: %w", m, err))
		return false
	}
	return true
}

func (tp *grpcTap) fail(err error) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.err == nil {
		tp.err = err
	}
}

func (tp *grpcTap) accept() {
	for {
		client, err := tp.l.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", tp.upstream)
		if err != nil {
			_ = client.Close()
			continue
		}
		c := &tapConn{tp: tp, client: client, server: server, streams: map[uint32]*tapStream{}}
		tp.mu.Lock()
		tp.conns[c] = true
		tp.mu.Unlock()
		go c.clientToServer()
		go c.serverToClient()
	}
}

// tapConn is one proxied connection.
type tapConn struct {
	tp             *grpcTap
	client, server net.Conn
	wmu            sync.Mutex // writes to server: whole frames only

	mu      sync.Mutex // streams, held, closed, writes to client
	streams map[uint32]*tapStream
	held    []byte // server bytes held back while frozen
	closed  bool
}

type tapStream struct {
	method    string
	req, resp bytes.Buffer
	answer    chan string // receives the grpc-status of the response (a kill's ack)
}

// cancelPolls resets the worker's open poll calls at the server (RST_STREAM, CANCEL).
func (c *tapConn) cancelPolls() {
	c.mu.Lock()
	var ids []uint32
	for id, s := range c.streams {
		if strings.HasPrefix(s.method, workflowService+"Poll") {
			ids = append(ids, id)
			delete(c.streams, id)
		}
	}
	c.mu.Unlock()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for _, id := range ids {
		// An RST_STREAM frame: length 4, type 0x3, no flags, the stream, CANCEL (0x8).
		f := []byte{0, 0, 4, 0x3, 0, 0, 0, 0, 0, 0, 0, 0, 0x8}
		binary.BigEndian.PutUint32(f[5:9], id&0x7fffffff)
		if _, err := c.server.Write(f); err != nil {
			return
		}
	}
}

func (c *tapConn) close() {
	c.mu.Lock()
	c.closed = true
	c.held = nil
	c.mu.Unlock()
	_ = c.client.Close()
	_ = c.server.Close()
}

func (c *tapConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func (c *tapConn) awaitAnswer(stream uint32, ack chan string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.streams[stream]; s != nil {
		s.answer = ack
	}
}

// waitThawed blocks while the tap is frozen; false when the connection was closed.
func (c *tapConn) waitThawed() bool {
	tp := c.tp
	tp.mu.Lock()
	for tp.frozen && !c.isClosed() {
		tp.cond.Wait()
	}
	tp.mu.Unlock()
	return !c.isClosed()
}

func (c *tapConn) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.held) > 0 && !c.closed {
		_, _ = c.client.Write(c.held)
	}
	c.held = nil
}

// frameReader reads HTTP/2 frames and keeps the raw bytes of each, to forward them as read.
type frameReader struct {
	raw bytes.Buffer
	fr  *http2.Framer
}

func newFrameReader(r io.Reader) *frameReader {
	f := &frameReader{}
	f.fr = http2.NewFramer(io.Discard, io.TeeReader(r, &f.raw))
	f.fr.SetMaxReadFrameSize(1<<24 - 1)
	dec := hpack.NewDecoder(4096, nil)
	dec.SetAllowedMaxDynamicTableSize(1 << 20)
	f.fr.ReadMetaHeaders = dec
	f.fr.MaxHeaderListSize = 1 << 24
	return f
}

// next returns the next frame and its raw bytes (valid until the next call).
func (f *frameReader) next() (http2.Frame, []byte, error) {
	f.raw.Reset()
	fr, err := f.fr.ReadFrame()
	var se http2.StreamError
	if errors.As(err, &se) {
		return nil, f.raw.Bytes(), nil // a stream the tap need not understand: pass it on
	}
	return fr, f.raw.Bytes(), err
}

func (c *tapConn) clientToServer() {
	defer c.close()
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c.client, preface); err != nil {
		return
	}
	if _, err := c.server.Write(preface); err != nil {
		return
	}
	fr := newFrameReader(c.client)
	for {
		f, raw, err := fr.next()
		if err != nil {
			if !isClosedErr(err) && !c.isClosed() {
				c.tp.fail(fmt.Errorf("read worker frame: %w", err))
			}
			return
		}
		var act tapAction
		if f != nil {
			act = c.clientFrame(f)
		}
		if !act.trigger && !c.waitThawed() {
			return
		}
		c.wmu.Lock()
		_, err = c.server.Write(raw)
		c.wmu.Unlock()
		if err != nil {
			return
		}
		if act.trigger && !c.waitThawed() {
			return
		}
	}
}

func (c *tapConn) clientFrame(f http2.Frame) tapAction {
	id := f.Header().StreamID
	var ended bool
	c.mu.Lock()
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		if p := f.PseudoValue("path"); p != "" {
			c.streams[id] = &tapStream{method: p}
		}
		ended = f.StreamEnded()
	case *http2.DataFrame:
		if s := c.streams[id]; s != nil && tapRequests[s.method] {
			s.req.Write(f.Data())
		}
		ended = f.StreamEnded()
	case *http2.RSTStreamFrame:
		delete(c.streams, id)
	}
	s := c.streams[id]
	c.mu.Unlock()
	if !ended || s == nil || !tapRequests[s.method] {
		return tapAction{}
	}
	msg, ok := c.tp.grpcMessage(s.req.Bytes())
	if !ok {
		return tapAction{}
	}
	return c.tp.onRequest(c, id, s.method, msg)
}

func (c *tapConn) serverToClient() {
	defer c.close()
	fr := newFrameReader(c.server)
	for {
		f, raw, err := fr.next()
		if err != nil {
			if !isClosedErr(err) && !c.isClosed() {
				c.tp.fail(fmt.Errorf("read server frame: %w", err))
			}
			return
		}
		if f != nil {
			c.serverFrame(f)
		}
		c.tp.mu.Lock()
		frozen := c.tp.frozen
		c.tp.mu.Unlock()
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return
		}
		if frozen {
			c.held = append(c.held, raw...)
			c.mu.Unlock()
			continue
		}
		if len(c.held) > 0 {
			_, _ = c.client.Write(c.held)
			c.held = nil
		}
		_, err = c.client.Write(raw)
		c.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (c *tapConn) serverFrame(f http2.Frame) {
	id := f.Header().StreamID
	c.mu.Lock()
	s := c.streams[id]
	if s == nil {
		c.mu.Unlock()
		return
	}
	var msg []byte
	switch f := f.(type) {
	case *http2.DataFrame:
		if tapResponses[s.method] {
			s.resp.Write(f.Data())
			if b := s.resp.Bytes(); len(b) >= 5 && len(b) >= 5+int(binary.BigEndian.Uint32(b[1:5])) {
				msg = bytes.Clone(b)
				s.resp.Reset()
			}
		}
	case *http2.MetaHeadersFrame:
		if f.StreamEnded() {
			if s.answer != nil {
				status := "missing"
				for _, hf := range f.RegularFields() {
					if hf.Name == "grpc-status" {
						status = hf.Value
					}
				}
				s.answer <- status
				s.answer = nil
			}
			delete(c.streams, id)
		}
	case *http2.RSTStreamFrame:
		if s.answer != nil {
			s.answer <- "reset " + strconv.Itoa(int(f.ErrCode))
			s.answer = nil
		}
		delete(c.streams, id)
	}
	method := s.method
	c.mu.Unlock()
	if msg != nil {
		if m, ok := c.tp.grpcMessage(msg); ok {
			c.tp.onResponse(method, m)
		}
	}
}

// grpcMessage unwraps one length-prefixed gRPC message, gunzipping it when flagged.
func (tp *grpcTap) grpcMessage(b []byte) ([]byte, bool) {
	if len(b) < 5 {
		return nil, false
	}
	n := int(binary.BigEndian.Uint32(b[1:5]))
	if len(b) < 5+n {
		tp.fail(fmt.Errorf("short gRPC message: %d of %d bytes", len(b)-5, n))
		return nil, false
	}
	msg := b[5 : 5+n]
	if b[0] == 0 {
		return msg, true
	}
	zr, err := gzip.NewReader(bytes.NewReader(msg))
	if err != nil {
		tp.fail(fmt.Errorf("gunzip gRPC message: %w", err))
		return nil, false
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		tp.fail(fmt.Errorf("gunzip gRPC message: %w", err))
		return nil, false
	}
	return out, true
}

func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) ||
		strings.Contains(err.Error(), "connection reset")
}

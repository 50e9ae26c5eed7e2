package activities

import (
	"context"
	"sync"
	"time"

	"go.temporal.io/sdk/activity"
)

// startHeartbeat calls beat every `every` until the returned stop is called; stop returns
// once the last call has finished, and may be called again. every <= 0 means a third of the
// activity's heartbeat timeout, at most 10s and at least 100ms, so a long step is never
// mistaken for a dead worker and a cancellation reaches it within one beat.
func startHeartbeat(ctx context.Context, every time.Duration, beat func()) (stop func()) {
	if every <= 0 {
		every = 10 * time.Second
		if hb := activity.GetInfo(ctx).HeartbeatTimeout; hb > 0 && hb/3 < every {
			every = max(hb/3, 100*time.Millisecond)
		}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				beat()
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		wg.Wait()
	}
}

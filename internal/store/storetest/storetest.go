// Package storetest is the conformance suite every store.Store backend
// passes: Run it from the backend's tests with a factory for empty stores.
package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kohakku/drflow/internal/store"
)

// LargeSize is the size of the multi-part-sized objects the suite writes:
// more than two default S3 parts, not a multiple of any part size.
const LargeSize = 40<<20 + 12345

// Run runs the conformance suite. newStore returns an empty store (a fresh
// directory, bucket or prefix) for one subtest; it is called once per
// subtest and must register its own cleanup.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, newStore(t)) })
	t.Run("Overwrite", func(t *testing.T) { testOverwrite(t, newStore(t)) })
	t.Run("Missing", func(t *testing.T) { testMissing(t, newStore(t)) })
	t.Run("List", func(t *testing.T) { testList(t, newStore(t)) })
	t.Run("Delete", func(t *testing.T) { testDelete(t, newStore(t)) })
	t.Run("FailedPut", func(t *testing.T) { testFailedPut(t, newStore(t)) })
	t.Run("CancelledPut", func(t *testing.T) { testCancelledPut(t, newStore(t)) })
	t.Run("Progress", func(t *testing.T) { testProgress(t, newStore(t)) })
	t.Run("InvalidKeys", func(t *testing.T) { testInvalidKeys(t, newStore(t)) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, newStore(t)) })
}

// Generator yields size pseudo-random bytes from seed in uneven chunks, the
// way a pipe from pg_dump does: no Len, no Seek, so a store cannot learn the
// length in advance. Equal seeds give equal bytes.
type Generator struct {
	rng       *rand.ChaCha8
	remaining int64
	chunk     int
}

// NewGenerator returns a generator of size bytes.
func NewGenerator(seed uint64, size int64) *Generator {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return &Generator{rng: rand.NewChaCha8(s), remaining: size, chunk: 100_003}
}

func (g *Generator) Read(p []byte) (int, error) {
	if g.remaining <= 0 {
		return 0, io.EOF
	}
	n := min(len(p), g.chunk, int(min(g.remaining, 1<<30)))
	g.rng.Read(p[:n])
	g.remaining -= int64(n)
	return n, nil
}

// Digest returns the SHA-256 and length of what the generator for seed and
// size yields.
func Digest(t testing.TB, seed uint64, size int64) ([32]byte, int64) {
	t.Helper()
	return digest(t, NewGenerator(seed, size))
}

func digest(t testing.TB, r io.Reader) ([32]byte, int64) {
	t.Helper()
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return [32]byte(h.Sum(nil)), n
}

// FailingReader yields n bytes of data from a generator, then err.
func FailingReader(seed uint64, n int64, err error) io.Reader {
	return io.MultiReader(NewGenerator(seed, n), errReader{err})
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	t.Cleanup(cancel)
	return c
}

func put(t *testing.T, s store.Store, key string, data []byte) {
	t.Helper()
	n, err := s.Put(ctx(t), key, bytes.NewReader(data), store.PutOptions{SizeHint: int64(len(data))})
	if err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
	if n != int64(len(data)) {
		t.Fatalf("Put(%q) = %d bytes, want %d", key, n, len(data))
	}
}

func get(t *testing.T, s store.Store, key string) []byte {
	t.Helper()
	rc, err := s.Get(ctx(t), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("Get(%q): read: %v", key, err)
	}
	return b
}

func list(t *testing.T, s store.Store, prefix string) []store.ObjectInfo {
	t.Helper()
	var got []store.ObjectInfo
	if err := s.List(ctx(t), prefix, func(oi store.ObjectInfo) error {
		got = append(got, oi)
		return nil
	}); err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return got
}

func keys(infos []store.ObjectInfo) []string {
	ks := []string{}
	for _, oi := range infos {
		ks = append(ks, oi.Key)
	}
	return ks
}

func equalKeys(a, b []string) bool {
	return strings.Join(a, "\n") == strings.Join(b, "\n") && len(a) == len(b)
}

func wantNotFound(t *testing.T, s store.Store, key string) {
	t.Helper()
	_, err := s.Stat(ctx(t), key)
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Stat(%q) = %v, want ErrNotFound", key, err)
	}
	rc, err := s.Get(ctx(t), key)
	if err == nil {
		rc.Close()
	}
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get(%q) = %v, want ErrNotFound", key, err)
	}
}

func testRoundTrip(t *testing.T, s store.Store) {
	for _, tc := range []struct {
		name string
		size int64
	}{
		{"empty", 0},
		{"small", 5},
		{"one-part-boundary", 16 << 20},
		{"multipart", LargeSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "sets/2026-11-21T02-00-00Z/postgres/" + tc.name + ".dump.zst"
			seed := uint64(tc.size) + 1
			before := time.Now().Add(-time.Minute)
			n, err := s.Put(ctx(t), key, NewGenerator(seed, tc.size), store.PutOptions{
				ContentType: "application/zstd", SizeHint: -1,
			})
			if err != nil {
				t.Fatalf("Put: %v", err)
			}
			if n != tc.size {
				t.Fatalf("Put = %d bytes, want %d", n, tc.size)
			}
			oi, err := s.Stat(ctx(t), key)
			if err != nil {
				t.Fatalf("Stat: %v", err)
			}
			if oi.Key != key || oi.Size != tc.size {
				t.Fatalf("Stat = %+v, want key %q size %d", oi, key, tc.size)
			}
			if oi.ModTime.Before(before) || oi.ModTime.After(time.Now().Add(time.Minute)) {
				t.Fatalf("Stat ModTime = %v, want about now", oi.ModTime)
			}
			rc, err := s.Get(ctx(t), key)
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			got, gotN := digest(t, rc)
			if err := rc.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			want, _ := Digest(t, seed, tc.size)
			if gotN != tc.size || got != want {
				t.Fatalf("Get: %d bytes, sha256 %x; want %d bytes, sha256 %x", gotN, got, tc.size, want)
			}
			if ls := list(t, s, key); len(ls) != 1 || ls[0].Key != key || ls[0].Size != tc.size {
				t.Fatalf("List(%q) = %+v, want the one object of size %d", key, ls, tc.size)
			}
		})
	}
}

func testOverwrite(t *testing.T, s store.Store) {
	const key = "sets/x/manifest.json"
	put(t, s, key, []byte("first version, the longer one"))
	put(t, s, key, []byte("second"))
	if got := get(t, s, key); string(got) != "second" {
		t.Fatalf("Get after overwrite = %q, want %q", got, "second")
	}
	oi, err := s.Stat(ctx(t), key)
	if err != nil || oi.Size != int64(len("second")) {
		t.Fatalf("Stat after overwrite = %+v, %v; want size %d", oi, err, len("second"))
	}
	if ls := list(t, s, ""); len(ls) != 1 {
		t.Fatalf("List after overwrite = %+v, want one object", ls)
	}
}

func testMissing(t *testing.T, s store.Store) {
	put(t, s, "sets/a/manifest.json", []byte("{}"))
	for _, key := range []string{
		"sets/a/verify.json",  // sibling of an object
		"nothing/here",        // nothing at all
		"sets/a",              // a "directory" of objects is not an object
		"sets/a/manifest.jso", // a prefix of a key
		"sets/a/manifest.json/x",
	} {
		t.Run(key, func(t *testing.T) {
			_, err := s.Stat(ctx(t), key)
			if !errors.Is(err, store.ErrNotFound) || !store.IsPermanent(err) {
				t.Fatalf("Stat = %v, want a permanent ErrNotFound", err)
			}
			if !strings.Contains(err.Error(), key) {
				t.Errorf("Stat error %q does not name the key", err)
			}
			rc, err := s.Get(ctx(t), key)
			if err == nil {
				rc.Close()
			}
			if !errors.Is(err, store.ErrNotFound) || !store.IsPermanent(err) {
				t.Fatalf("Get = %v, want a permanent ErrNotFound", err)
			}
			if !strings.Contains(err.Error(), key) {
				t.Errorf("Get error %q does not name the key", err)
			}
		})
	}
}

func testList(t *testing.T, s store.Store) {
	// Lexical byte order, which is not the order of a depth-first walk of
	// directories: "a-c" < "a/b" < "a0" because '-' < '/' < '0'.
	all := []string{
		"list/a-c",
		"list/a/b",
		"list/a/c/d",
		"list/a0",
		"list/ab",
		"list/b",
		"list/é", // multi-byte UTF-8 sorts after ASCII
		"other/z",
	}
	for i, k := range []int{5, 2, 7, 0, 3, 6, 1, 4} { // put out of order
		put(t, s, all[k], bytes.Repeat([]byte{'x'}, i+k))
	}
	sizes := map[string]int64{}
	for i, k := range []int{5, 2, 7, 0, 3, 6, 1, 4} {
		sizes[all[k]] = int64(i + k)
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"", all},
		{"list/", all[:7]},
		{"list", all[:7]},
		{"list/a", all[:5]},
		{"list/a/", all[1:3]},
		{"list/a/c", all[2:3]},
		{"list/a/b", all[1:2]},
		{"list/a/b/", nil}, // a key is not a directory
		{"list/ab", all[4:5]},
		{"list/abc", nil},
		{"lis", all[:7]},
		{"list/c", nil},
		{"nothing/", nil},
		{"list/é", all[6:7]},
	} {
		t.Run("prefix="+tc.prefix, func(t *testing.T) {
			got := list(t, s, tc.prefix)
			if want := tc.want; !equalKeys(keys(got), append([]string{}, want...)) {
				t.Fatalf("List(%q) = %q, want %q", tc.prefix, keys(got), want)
			}
			for _, oi := range got {
				if oi.Size != sizes[oi.Key] {
					t.Errorf("List: %s size %d, want %d", oi.Key, oi.Size, sizes[oi.Key])
				}
				if oi.ModTime.IsZero() {
					t.Errorf("List: %s has no ModTime", oi.Key)
				}
			}
		})
	}
	t.Run("early stop", func(t *testing.T) {
		stop := errors.New("enough")
		var seen []string
		err := s.List(ctx(t), "list/", func(oi store.ObjectInfo) error {
			seen = append(seen, oi.Key)
			if len(seen) == 2 {
				return stop
			}
			return nil
		})
		if err != stop && !errors.Is(err, stop) {
			t.Fatalf("List = %v, want the fn error %v", err, stop)
		}
		if !equalKeys(seen, all[:2]) {
			t.Fatalf("List called fn for %q, want %q then stop", seen, all[:2])
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		c, cancel := context.WithCancel(ctx(t))
		cancel()
		err := s.List(c, "", func(store.ObjectInfo) error { return nil })
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("List with a cancelled context = %v, want context.Canceled", err)
		}
	})
}

func testDelete(t *testing.T, s store.Store) {
	put(t, s, "d/a/b", []byte("1"))
	put(t, s, "d/a/c", []byte("2"))
	for range 2 { // idempotent
		if err := s.Delete(ctx(t), "d/a/b"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
	}
	wantNotFound(t, s, "d/a/b")
	if got := keys(list(t, s, "")); !equalKeys(got, []string{"d/a/c"}) {
		t.Fatalf("List after Delete = %q, want [d/a/c]", got)
	}
	for _, key := range []string{"d/never", "never/was/here", "d/a"} {
		if err := s.Delete(ctx(t), key); err != nil {
			t.Fatalf("Delete(%q) of a missing key = %v, want nil", key, err)
		}
	}
	if err := s.Delete(ctx(t), "d/a/c"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if got := list(t, s, ""); len(got) != 0 {
		t.Fatalf("List after deleting everything = %q", keys(got))
	}
	// The names are free again, also for a key where a "directory" was.
	put(t, s, "d/a", []byte("now an object"))
	if got := get(t, s, "d/a"); string(got) != "now an object" {
		t.Fatalf("Get = %q", got)
	}
}

func testFailedPut(t *testing.T, s store.Store) {
	boom := errors.New("pg_dump: exit status 1")
	for _, tc := range []struct {
		name string
		n    int64
	}{
		{"at once", 0},
		{"small", 1000},
		{"after parts", 36 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "failed/" + strings.ReplaceAll(tc.name, " ", "-")
			n, err := s.Put(ctx(t), key, FailingReader(1, tc.n, boom), store.PutOptions{SizeHint: -1})
			if !errors.Is(err, boom) {
				t.Fatalf("Put = %d, %v; want the reader's error", n, err)
			}
			if store.IsPermanent(err) {
				t.Errorf("IsPermanent(%v) = true for a reader error", err)
			}
			wantNotFound(t, s, key)
			if got := list(t, s, "failed/"); len(got) != 0 {
				t.Fatalf("List after failed Put = %q, want nothing", keys(got))
			}
		})
	}
	t.Run("keeps previous version", func(t *testing.T) {
		const key = "failed/existing"
		put(t, s, key, []byte("good backup"))
		if _, err := s.Put(ctx(t), key, FailingReader(2, 20<<20, boom), store.PutOptions{}); !errors.Is(err, boom) {
			t.Fatalf("Put = %v, want the reader's error", err)
		}
		if got := get(t, s, key); string(got) != "good backup" {
			t.Fatalf("Get after failed overwrite = %q, want the previous version", got)
		}
	})
}

// cancelReader calls cancel once it has yielded n bytes and goes on
// yielding data, so only the store's own context handling can stop Put.
type cancelReader struct {
	r      io.Reader
	n      int64
	cancel func()
}

func (c *cancelReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n -= int64(n)
	if c.n <= 0 && c.cancel != nil {
		c.cancel()
		c.cancel = nil
	}
	return n, err
}

func testCancelledPut(t *testing.T, s store.Store) {
	for _, tc := range []struct {
		name  string
		after int64
	}{
		{"before start", -1},
		{"small", 1000},
		{"after parts", 36 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "cancelled/" + strings.ReplaceAll(tc.name, " ", "-")
			c, cancel := context.WithCancel(ctx(t))
			defer cancel()
			var r io.Reader = NewGenerator(3, LargeSize)
			if tc.after < 0 {
				cancel()
			} else {
				r = &cancelReader{r: r, n: tc.after, cancel: cancel}
			}
			start := time.Now()
			n, err := s.Put(c, key, r, store.PutOptions{SizeHint: -1})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Put = %d, %v; want context.Canceled", n, err)
			}
			if store.IsPermanent(err) {
				t.Errorf("IsPermanent(%v) = true for a cancellation", err)
			}
			if d := time.Since(start); d > time.Minute {
				t.Errorf("cancelled Put took %v", d)
			}
			wantNotFound(t, s, key)
			if got := list(t, s, "cancelled/"); len(got) != 0 {
				t.Fatalf("List after cancelled Put = %q, want nothing", keys(got))
			}
		})
	}
}

func testProgress(t *testing.T, s store.Store) {
	for _, size := range []int64{0, 10, LargeSize} {
		t.Run(strconv.FormatInt(size, 10), func(t *testing.T) {
			var (
				mu    sync.Mutex
				calls []int64
				busy  bool
			)
			n, err := s.Put(ctx(t), "progress/obj", NewGenerator(4, size), store.PutOptions{
				SizeHint: -1,
				Progress: func(b int64) {
					mu.Lock()
					if busy {
						t.Error("Progress calls overlap")
					}
					busy = true
					calls = append(calls, b)
					mu.Unlock()
					time.Sleep(time.Millisecond)
					mu.Lock()
					busy = false
					mu.Unlock()
				},
			})
			if err != nil {
				t.Fatalf("Put: %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			for i := 1; i < len(calls); i++ {
				if calls[i] < calls[i-1] {
					t.Fatalf("Progress went back: %v", calls)
				}
			}
			if size > 0 && (len(calls) == 0 || calls[len(calls)-1] != n || n != size) {
				t.Fatalf("Put = %d; Progress calls end with %v; want both %d", n, calls[max(0, len(calls)-3):], size)
			}
			if size == LargeSize && len(calls) < 2 {
				t.Errorf("Progress called %d times for %d bytes, want it called as the upload goes", len(calls), size)
			}
		})
	}
}

// InvalidKeys are keys every backend rejects.
var InvalidKeys = []string{
	"",
	"/abs",
	"a/../b",
	"..",
	"../escape",
	"a/..",
	"a/./b",
	".",
	"a//b",
	"dir/",
	"nul\x00byte",
	"new\nline",
	"bad\xffutf8",
	"a/.drflow-tmp-123",
	strings.Repeat("k", store.MaxKeyLen+1),
}

func testInvalidKeys(t *testing.T, s store.Store) {
	for _, key := range InvalidKeys {
		t.Run(fmt.Sprintf("%.20q", key), func(t *testing.T) {
			check := func(op string, err error) {
				t.Helper()
				if !errors.Is(err, store.ErrInvalidKey) || !store.IsPermanent(err) {
					t.Errorf("%s(%q) = %v, want a permanent ErrInvalidKey", op, key, err)
					return
				}
				if key != "" && len(key) < 100 && !strings.Contains(err.Error(), strconv.Quote(key)) {
					t.Errorf("%s error %q does not name the key %q", op, err, key)
				}
			}
			_, err := s.Put(ctx(t), key, strings.NewReader("x"), store.PutOptions{})
			check("Put", err)
			rc, err := s.Get(ctx(t), key)
			if err == nil {
				rc.Close()
			}
			check("Get", err)
			_, err = s.Stat(ctx(t), key)
			check("Stat", err)
			check("Delete", s.Delete(ctx(t), key))
		})
	}
	for _, prefix := range []string{"/abs", "../", "a/../", "a//", "nul\x00"} {
		err := s.List(ctx(t), prefix, func(store.ObjectInfo) error { return nil })
		if !errors.Is(err, store.ErrInvalidKey) || !store.IsPermanent(err) {
			t.Errorf("List(%q) = %v, want a permanent ErrInvalidKey", prefix, err)
		}
	}
	if got := list(t, s, ""); len(got) != 0 {
		t.Fatalf("store holds %q after invalid keys", keys(got))
	}
}

// testConcurrent puts and deletes keys in shared "directories" at once, as
// the mirror and the retention sweep do.
func testConcurrent(t *testing.T, s store.Store) {
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 8 {
		wg.Go(func() {
			for i := range 5 {
				key := fmt.Sprintf("conc/%d/obj-%d-%d", i%2, w, i)
				data := []byte(key)
				if _, err := s.Put(ctx(t), key, bytes.NewReader(data), store.PutOptions{}); err != nil {
					errs <- err
					return
				}
				if i%2 == 0 {
					if err := s.Delete(ctx(t), key); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got := list(t, s, "conc/")
	if len(got) != 8*2 {
		t.Fatalf("List after concurrent puts = %d objects %q, want 16", len(got), keys(got))
	}
	for _, oi := range got {
		if b := get(t, s, oi.Key); string(b) != oi.Key {
			t.Fatalf("Get(%q) = %q", oi.Key, b)
		}
	}
}

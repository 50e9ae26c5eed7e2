package activities

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"

	"github.com/kohakku/drflow/internal/activitytest"
	"github.com/kohakku/drflow/internal/store"
	"github.com/kohakku/drflow/schemas"
)

// verifySampleRun is one VerifySample run in the Temporal activity test
// environment.
type verifySampleRun struct {
	chk   SampleCheck
	err   error
	beats []VerifySampleProgress
}

func verifyRunSample(t *testing.T, o *Objects, in VerifySampleInput) verifySampleRun {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(o)
	var (
		mu  sync.Mutex
		run verifySampleRun
	)
	env.SetWorkerOptions(worker.Options{Interceptors: []interceptor.WorkerInterceptor{
		activitytest.Heartbeats(func(details ...any) {
			p, ok := details[0].(VerifySampleProgress)
			if len(details) != 1 || !ok {
				t.Errorf("heartbeat details %#v", details)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			run.beats = append(run.beats, p)
		}),
	}})
	v, err := env.ExecuteActivity(o.VerifySample, in)
	if err == nil {
		err = v.Get(&run.chk)
	}
	run.err = err
	mu.Lock()
	defer mu.Unlock()
	return run
}

func TestVerifySample(t *testing.T) {
	ctx := context.Background()
	e := newMirrorEnv(t)
	const bucket = schemas.DefaultBucket
	require.NoError(t, e.app.MakeBucket(ctx, bucket))
	seed := map[string]int{}
	for id := int64(1); id <= 150; id++ {
		seed[schemas.BriefKey(id)] = 200 + int(id*37%1500)
	}
	for i := range 5 {
		seed[schemas.SkillKey(fmt.Sprintf("skill-%02d", i), schemas.SkillFileName)] = 900 + i
	}
	require.NoError(t, putObjects(ctx, e.src, bucket, seed, 1))
	// A multipart upload: its ETag is not an MD5, so only its size is checked.
	const multipart = "big/multipart.bin"
	body := objectBody(multipart, 1, 6<<20+5)
	info, err := e.src.PutObject(ctx, bucket, multipart, bytes.NewReader(body), int64(len(body)), minio.PutObjectOptions{PartSize: 5 << 20})
	require.NoError(t, err)
	require.Contains(t, info.ETag, "-", "multipart ETag")
	total := len(seed) + 1

	const set = "2026-11-21T02-00-00Z"
	stores := map[string]store.Store{
		"fs": redisFSStore(t),
		"s3": e.s3Store(t, "drflow-backup", true),
	}
	mirrors := map[string]MirrorResult{}
	for name, st := range stores {
		run := runMirror(t, e.objects(t, st), MirrorInput{SetID: set, Bucket: bucket}, nil)
		require.NoError(t, run.err)
		require.Equal(t, int64(total), run.res.Objects)
		mirrors[name] = run.res
	}

	for _, name := range []string{"fs", "s3"} {
		t.Run("good "+name, func(t *testing.T) {
			o := &Objects{Store: stores[name]}
			// 0: the default sample of 100.
			run := verifyRunSample(t, o, VerifySampleInput{SetID: set, Mirror: mirrors[name]})
			require.NoError(t, run.err)
			chk := run.chk
			t.Logf("%+v", chk)
			assert.Equal(t, SampleCheck{Bucket: bucket, Passed: true, ListingOK: true, Listed: int64(total),
				Sampled: DefaultVerifySample, Matched: DefaultVerifySample}, chk)
			require.NotEmpty(t, run.beats)
			last := run.beats[len(run.beats)-1]
			assert.Equal(t, "objects", last.Phase)
			assert.Equal(t, int64(DefaultVerifySample), last.Checked)

			// Every object, the multipart one included.
			run = verifyRunSample(t, o, VerifySampleInput{SetID: set, Mirror: mirrors[name], Sample: 1000})
			require.NoError(t, run.err)
			assert.Equal(t, SampleCheck{Bucket: bucket, Passed: true, ListingOK: true, Listed: int64(total),
				Sampled: total, Matched: total}, run.chk)
		})
	}

	t.Run("deleted and changed objects", func(t *testing.T) {
		for _, name := range []string{"fs", "s3"} {
			t.Run(name, func(t *testing.T) {
				st := stores[name]
				prefix := mirrors[name].Prefix
				deleted, changed, resized := schemas.BriefKey(7), schemas.BriefKey(42), multipart
				// S3 keeps modification times to the second: rewrite in a later second than
				// the mirror run's end, or "stored after the run" cannot be told.
				runEnd := mirrors[name].Listing.StartedAt.Add(mirrors[name].Listing.Duration)
				time.Sleep(time.Until(runEnd.Truncate(time.Second).Add(1100 * time.Millisecond)))
				require.NoError(t, st.Delete(ctx, prefix+deleted))
				// Same size, other bytes: only the MD5 tells.
				good := objectBody(changed, 1, seed[changed])
				_, err := st.Put(ctx, prefix+changed, bytes.NewReader(objectBody(changed, 2, seed[changed])), store.PutOptions{})
				require.NoError(t, err)
				// The multipart object has no MD5 to compare: its size is.
				_, err = st.Put(ctx, prefix+resized, bytes.NewReader(body[:len(body)-1]), store.PutOptions{})
				require.NoError(t, err)
				defer func() {
					for k, b := range map[string][]byte{deleted: objectBody(deleted, 1, seed[deleted]), changed: good, resized: body} {
						_, err := st.Put(ctx, prefix+k, bytes.NewReader(b), store.PutOptions{})
						require.NoError(t, err)
					}
				}()

				run := verifyRunSample(t, &Objects{Store: st}, VerifySampleInput{SetID: set, Mirror: mirrors[name], Sample: 1000})
				require.NoError(t, run.err, "findings are not errors")
				chk := run.chk
				for _, p := range chk.Problems {
					t.Log(p)
				}
				assert.False(t, chk.Passed)
				assert.True(t, chk.ListingOK)
				assert.Equal(t, total, chk.Sampled)
				assert.Equal(t, 1, chk.Missing)
				assert.Equal(t, 2, chk.Different)
				assert.Equal(t, total-3, chk.Matched)
				require.Len(t, chk.Problems, 3)
				// In key order: missing first, then the differences.
				assert.Equal(t, fmt.Sprintf("%s%s: missing from the mirror (listed with %d bytes)", prefix, deleted, seed[deleted]), chk.Problems[0])
				assert.True(t, strings.HasPrefix(chk.Problems[1], fmt.Sprintf("%s%s: size mismatch: %d bytes in the mirror, %d in the listing (the mirror's copy was stored at ",
					prefix, resized, len(body)-1, len(body))), chk.Problems[1])
				assert.True(t, strings.HasPrefix(chk.Problems[2], prefix+changed+": content mismatch: md5 "), chk.Problems[2])
				assert.Contains(t, chk.Problems[2], "after this set's mirror run ended at")
			})
		}
	})

	t.Run("problems are capped per kind", func(t *testing.T) {
		st := stores["fs"]
		prefix := mirrors["fs"].Prefix
		var gone []string
		for id := int64(100); id < 115; id++ {
			k := schemas.BriefKey(id)
			gone = append(gone, k)
			require.NoError(t, st.Delete(ctx, prefix+k))
		}
		defer func() {
			for _, k := range gone {
				_, err := st.Put(ctx, prefix+k, bytes.NewReader(objectBody(k, 1, seed[k])), store.PutOptions{})
				require.NoError(t, err)
			}
		}()
		run := verifyRunSample(t, &Objects{Store: st, Concurrency: 3}, VerifySampleInput{SetID: set, Mirror: mirrors["fs"], Sample: 1000})
		require.NoError(t, run.err)
		assert.Equal(t, len(gone), run.chk.Missing)
		require.Len(t, run.chk.Problems, verifyReportMax+1)
		assert.Equal(t, fmt.Sprintf("%s…: %d more sampled objects missing from the mirror", prefix, len(gone)-verifyReportMax),
			run.chk.Problems[verifyReportMax])
	})

	listingFindings := []struct {
		name   string
		change func(t *testing.T, st store.Store, m MirrorResult) MirrorResult
		want   []string
		ok     bool // ListingOK
	}{{
		name: "listing corrupted",
		change: func(t *testing.T, st store.Store, m MirrorResult) MirrorResult {
			a := verifyRewrite(t, st, m.Listing, ListingKey("corrupt", bucket), func(b []byte) []byte {
				b[len(b)/2] ^= 0x01
				return b
			})
			m.Listing = a
			return m
		},
		want: []string{": checksum mismatch: sha256 ", ": cannot be read as a listing: "},
	}, {
		name: "listing truncated",
		change: func(t *testing.T, st store.Store, m MirrorResult) MirrorResult {
			m.Listing = verifyRewrite(t, st, m.Listing, ListingKey("truncated", bucket), func(b []byte) []byte { return b[:len(b)-20] })
			return m
		},
		want: []string{": size mismatch: ", ": checksum mismatch: sha256 ", ": cannot be read as a listing: "},
	}, {
		// Two zstd frames, the second one damaged: the objects of the first
		// are read and sampled.
		name: "listing damaged after its first half",
		change: func(t *testing.T, st store.Store, m MirrorResult) MirrorResult {
			objs := readStoredListing(t, st, m.Listing)
			enc, err := zstd.NewWriter(nil)
			require.NoError(t, err)
			frame := func(objs []ListedObject) []byte {
				var b bytes.Buffer
				for _, o := range objs {
					require.NoError(t, json.NewEncoder(&b).Encode(o))
				}
				return enc.EncodeAll(b.Bytes(), nil)
			}
			half := len(objs) / 2
			second := frame(objs[half:])
			second[len(second)/2] ^= 0xff
			m.Listing.Key = ListingKey("half", bucket)
			_, err = st.Put(ctx, m.Listing.Key, bytes.NewReader(append(frame(objs[:half]), second...)), store.PutOptions{})
			require.NoError(t, err)
			return m
		},
		want: []string{": size mismatch: ", ": checksum mismatch: sha256 ", fmt.Sprintf(": cannot be read as a listing after %d objects (the sample is taken from those): ", total/2)},
	}, {
		name: "object count differs from the manifest",
		change: func(t *testing.T, st store.Store, m MirrorResult) MirrorResult {
			m.Listing.Objects++
			return m
		},
		want: []string{fmt.Sprintf(": object count mismatch: %d objects in the listing, %d in the manifest", total, total+1)},
		ok:   true,
	}}
	for _, c := range listingFindings {
		t.Run(c.name, func(t *testing.T) {
			for _, name := range []string{"fs", "s3"} {
				m := c.change(t, stores[name], mirrors[name])
				run := verifyRunSample(t, &Objects{Store: stores[name]}, VerifySampleInput{SetID: set, Mirror: m})
				require.NoError(t, run.err, "findings are not errors")
				chk := run.chk
				for _, p := range chk.Problems {
					t.Log(p)
				}
				assert.False(t, chk.Passed)
				assert.Equal(t, c.ok, chk.ListingOK, "ListingOK")
				require.Len(t, chk.Problems, len(c.want))
				for i, w := range c.want {
					assert.True(t, strings.HasPrefix(chk.Problems[i], m.Listing.Key+w), "%q does not start with %q", chk.Problems[i], m.Listing.Key+w)
				}
				// What the listing holds up to the damage is still sampled.
				assert.Equal(t, min(int(chk.Listed), DefaultVerifySample), chk.Sampled)
				assert.Equal(t, chk.Sampled, chk.Matched)
			}
		})
	}

	t.Run("store read fails", func(t *testing.T) {
		for _, after := range []int64{mirrors["fs"].Listing.Size / 2, mirrors["fs"].Listing.Size + 100} {
			// The listing's read breaks, then (after more bytes than the listing) an object's.
			st := verifyFailingStore{Store: stores["fs"], after: after, err: errors.New("connection reset by peer")}
			run := verifyRunSample(t, &Objects{Store: st}, VerifySampleInput{SetID: set, Mirror: mirrors["fs"], Sample: 1000})
			ae := redisAppError(t, run.err)
			t.Log(run.err)
			assert.False(t, ae.NonRetryable())
			assert.Contains(t, run.err.Error(), "connection reset by peer")
		}
	})

	t.Run("missing listing", func(t *testing.T) {
		for name, st := range stores {
			m := mirrors[name]
			m.Listing.Key = ListingKey("2020-01-01T00-00-00Z", bucket)
			run := verifyRunSample(t, &Objects{Store: st}, VerifySampleInput{SetID: set, Mirror: m})
			requireAppError(t, run.err, ErrArtifactNotFound, m.Listing.Key, "not in the backup store")
		}
	})

	t.Run("bad input", func(t *testing.T) {
		good := mirrors["fs"]
		with := func(f func(m *MirrorResult)) MirrorResult {
			m := good
			f(&m)
			return m
		}
		cases := []struct {
			name   string
			o      *Objects
			sample int
			m      MirrorResult
			typ    string
			text   string
		}{
			{"negative sample", &Objects{Store: stores["fs"]}, -1, good, ErrInvalidInput, `"sample" is -1`},
			{"no bucket", &Objects{Store: stores["fs"]}, 0, with(func(m *MirrorResult) { m.Bucket, m.Listing.Source = "", "" }), ErrInvalidInput, "no bucket"},
			{"no listing", &Objects{Store: stores["fs"]}, 0, with(func(m *MirrorResult) { m.Listing = Artifact{} }), ErrInvalidInput, "no listing artifact"},
			{"prefix without slash", &Objects{Store: stores["fs"]}, 0, with(func(m *MirrorResult) { m.Prefix = "mirror/kohakku" }), ErrInvalidInput, "must end with /"},
			{"not a listing", &Objects{Store: stores["fs"]}, 0, with(func(m *MirrorResult) { m.Listing.Kind = KindRedis }), ErrInvalidInput, `"redis" artifact`},
			{"no sha256", &Objects{Store: stores["fs"]}, 0, with(func(m *MirrorResult) { m.Listing.SHA256 = "x" }), ErrInvalidInput, "64 hex digits"},
			{"no store", &Objects{}, 0, good, ErrInvalidConfig, "no backup store"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				run := verifyRunSample(t, c.o, VerifySampleInput{SetID: set, Mirror: c.m, Sample: c.sample})
				requireAppError(t, run.err, c.typ, c.text)
			})
		}
	})
}

// The sample depends on the seed and the keys only: not on the order the
// listing comes in, nor on objects outside it.
func TestVerifySamplePicker(t *testing.T) {
	var objs []ListedObject
	for i := range 1000 {
		objs = append(objs, ListedObject{Key: fmt.Sprintf("briefs/%04d.json", i), Size: int64(i)})
	}
	pick := func(seed string, n int, objs []ListedObject) []string {
		p := newSamplePicker(seed, n)
		for _, o := range objs {
			p.offer(o)
		}
		return keysOf(p.sorted())
	}
	a := pick("2026-11-21T02-00-00Z", 50, objs)
	require.Len(t, a, 50)
	assert.True(t, slices.IsSorted(a))
	assert.Equal(t, a, pick("2026-11-21T02-00-00Z", 50, objs), "same seed, same sample")
	reversed := slices.Clone(objs)
	slices.Reverse(reversed)
	assert.Equal(t, a, pick("2026-11-21T02-00-00Z", 50, reversed), "listing order does not matter")
	b := pick("2026-11-22T02-00-00Z", 50, objs)
	assert.NotEqual(t, a, b, "another set samples other objects")
	// Spread over the listing, not its first keys.
	assert.Greater(t, a[len(a)-1], "briefs/0500.json")
	assert.Len(t, pick("s", 2000, objs), 1000, "a sample larger than the listing takes it all")
	assert.Empty(t, pick("s", 0, objs))
	// The smaller sample is part of the larger one.
	small := pick("2026-11-21T02-00-00Z", 10, objs)
	for _, k := range small {
		assert.Contains(t, a, k)
	}
}

package activities

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"filippo.io/age"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/store"
)

// ageTestKeys returns keys encrypting to the recipients of ids and
// decrypting with the identities of with.
func ageTestKeys(t *testing.T, to []*age.X25519Identity, with ...*age.X25519Identity) *AgeKeys {
	t.Helper()
	var cfg config.Encryption
	for _, id := range to {
		cfg.AgeRecipients = append(cfg.AgeRecipients, id.Recipient().String())
	}
	for _, id := range with {
		cfg.AgeIdentities = append(cfg.AgeIdentities, config.Secret(id.String()))
	}
	if len(with) > 0 {
		cfg.AgeIdentityFile = "/etc/drflow/age-identity.txt"
	}
	k, err := NewAgeKeys(cfg)
	require.NoError(t, err)
	return k
}

func ageTestIdentity(t *testing.T) *age.X25519Identity {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	return id
}

// ageTestData is compressible text with some random bytes, bigger than a few
// age chunks (64 KiB) once compressed.
func ageTestData(t *testing.T, n int) []byte {
	t.Helper()
	var b bytes.Buffer
	noise := make([]byte, 64)
	for b.Len() < n {
		_, _ = rand.Read(noise)
		b.WriteString("task ")
		b.WriteString(hex.EncodeToString(noise))
		b.WriteString(" the agent finished the step and reported progress\n")
	}
	return b.Bytes()[:n]
}

// ageSeal compresses and encrypts data as the backup activities do and
// returns the stored bytes and their artifact.
func ageSeal(t *testing.T, keys *AgeKeys, data []byte) ([]byte, Artifact) {
	t.Helper()
	var stored bytes.Buffer
	c, err := compressAndHash(&stored, bytes.NewReader(data), ZstdOptions{Concurrency: 2}, keys, nil)
	require.NoError(t, err)
	a := Artifact{Kind: KindPostgres, Source: "kohakku-controller", Key: PostgresKey("2026-11-21T02-00-00Z", "kohakku-controller"),
		Size: c.Size, RawSize: c.RawSize, SHA256: c.SHA256, Compression: CompressionZstd}
	keys.stamp(&a)
	return stored.Bytes(), a
}

// ageOpen decodes stored bytes through the one reader helper.
func ageOpen(keys *AgeKeys, a Artifact, stored []byte) ([]byte, error) {
	plain, closeDec, err := keys.openArtifact(bytes.NewReader(stored), a)
	defer closeDec()
	if err != nil {
		return nil, err
	}
	return io.ReadAll(plain)
}

func requireAppErr(t *testing.T, err error, typ string, contains ...string) {
	t.Helper()
	require.Error(t, err)
	var app *temporal.ApplicationError
	require.True(t, errors.As(err, &app), "not an application error: %v", err)
	assert.Equal(t, typ, app.Type())
	assert.True(t, app.NonRetryable(), "non-retryable")
	for _, c := range contains {
		assert.Contains(t, err.Error(), c)
	}
}

func TestAgeRoundTrip(t *testing.T) {
	a, b := ageTestIdentity(t), ageTestIdentity(t)
	data := ageTestData(t, 3<<20)
	for _, tt := range []struct {
		name string
		keys *AgeKeys
		dec  *AgeKeys
	}{
		{"unencrypted", nil, nil},
		{"one recipient", ageTestKeys(t, []*age.X25519Identity{a}), ageTestKeys(t, nil, a)},
		{"two recipients, the second identity", ageTestKeys(t, []*age.X25519Identity{a, b}), ageTestKeys(t, nil, b)},
		{"identity among others", ageTestKeys(t, []*age.X25519Identity{b}), ageTestKeys(t, nil, a, b)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			stored, art := ageSeal(t, tt.keys, data)
			sum := sha256.Sum256(stored)
			assert.Equal(t, hex.EncodeToString(sum[:]), art.SHA256, "the SHA-256 is of the stored bytes")
			assert.Equal(t, int64(len(stored)), art.Size)
			assert.Equal(t, int64(len(data)), art.RawSize)
			zstdMagic := []byte{0x28, 0xb5, 0x2f, 0xfd}
			if tt.keys == nil {
				assert.Equal(t, EncryptionNone, art.Encryption)
				assert.Empty(t, art.RecipientFingerprints)
				assert.True(t, bytes.HasPrefix(stored, zstdMagic))
			} else {
				assert.Equal(t, EncryptionAge, art.Encryption)
				assert.True(t, bytes.HasPrefix(stored, []byte("age-encryption.org/v1\n")), "an age file")
				assert.False(t, bytes.HasPrefix(stored, zstdMagic), "not a zstd frame")
				assert.False(t, bytes.Contains(stored, data[:40]), "no plaintext")
				assert.Equal(t, tt.keys.Fingerprints(), art.RecipientFingerprints)
				for _, fp := range art.RecipientFingerprints {
					assert.Regexp(t, `^sha256:[0-9a-f]{64}$`, fp)
				}
			}
			got, err := ageOpen(tt.dec, art, stored)
			require.NoError(t, err)
			assert.True(t, bytes.Equal(data, got), "round trip")
		})
	}
}

func TestAgeFingerprint(t *testing.T) {
	id := ageTestIdentity(t)
	r := id.Recipient().String()
	sum := sha256.Sum256([]byte(r))
	assert.Equal(t, "sha256:"+hex.EncodeToString(sum[:]), AgeFingerprint(r), "printf %%s age1… | sha256sum")
	k := ageTestKeys(t, []*age.X25519Identity{id}, id)
	assert.Equal(t, []string{AgeFingerprint(r)}, k.Fingerprints())
	assert.True(t, k.Encrypts())
	assert.False(t, ageTestKeys(t, nil, id).Encrypts(), "identities alone encrypt nothing")
	var none *AgeKeys
	assert.False(t, none.Encrypts())
	assert.Nil(t, none.Fingerprints())
	nk, err := NewAgeKeys(config.Encryption{})
	require.NoError(t, err)
	assert.Nil(t, nk, "nothing configured: no keys")
}

// TestAgeKeyErrors: an encrypted artifact the worker has no identity for, or
// none of the right one, fails with a non-retryable error that names the set,
// the fingerprints and the variable, and never a key.
func TestAgeKeyErrors(t *testing.T) {
	owner, other := ageTestIdentity(t), ageTestIdentity(t)
	stored, art := ageSeal(t, ageTestKeys(t, []*age.X25519Identity{owner}), ageTestData(t, 200<<10))
	fp := AgeFingerprint(owner.Recipient().String())
	otherFP := AgeFingerprint(other.Recipient().String())

	t.Run("no identity", func(t *testing.T) {
		for _, keys := range []*AgeKeys{nil, ageTestKeys(t, []*age.X25519Identity{owner})} {
			_, err := ageOpen(keys, art, stored)
			requireAppErr(t, err, ErrAgeIdentityMissing, "set 2026-11-21T02-00-00Z", fp, "DRFLOW_AGE_IDENTITY_FILE")
			assert.Equal(t, err.Error(), keys.checkReadable(art).Error(), "known before anything is read")
		}
	})
	t.Run("another identity", func(t *testing.T) {
		keys := ageTestKeys(t, nil, other)
		_, err := ageOpen(keys, art, stored)
		requireAppErr(t, err, ErrAgeIdentityMismatch,
			"set 2026-11-21T02-00-00Z ("+art.Key+") is encrypted to age recipients "+fp+"; none of the identities in DRFLOW_AGE_IDENTITY_FILE (/etc/drflow/age-identity.txt) matches (they are for "+otherFP+")")
		assert.NotContains(t, err.Error(), other.String())
		assert.NotContains(t, err.Error(), owner.Recipient().String(), "fingerprints, not keys")
		assert.Equal(t, err.Error(), keys.checkReadable(art).Error(), "known before anything is read")
	})
	t.Run("another identity, no fingerprints recorded", func(t *testing.T) {
		bare := art
		bare.RecipientFingerprints = nil
		keys := ageTestKeys(t, nil, other)
		require.NoError(t, keys.checkReadable(bare), "nothing to compare before reading")
		_, err := ageOpen(keys, bare, stored)
		requireAppErr(t, err, ErrAgeIdentityMismatch, "none of the identities in DRFLOW_AGE_IDENTITY_FILE")
	})
	t.Run("unencrypted artifact needs no identity", func(t *testing.T) {
		plainStored, plainArt := ageSeal(t, nil, []byte("hello"))
		got, err := ageOpen(nil, plainArt, plainStored)
		require.NoError(t, err)
		assert.Equal(t, "hello", string(got))
	})
	t.Run("AgeKeyError finds it through wrapping", func(t *testing.T) {
		_, err := ageOpen(nil, art, stored)
		wrapped := errors.Join(errors.New("other"), err)
		assert.Same(t, err, AgeKeyError(wrapped))
		assert.Nil(t, AgeKeyError(errors.New("zstd: corrupt")))
		assert.Nil(t, AgeKeyError(NonRetryable(ErrInvalidInput, errors.New("bad"))))
	})
}

// TestAgeDamagedCiphertext: a truncated, altered or extended file is an error,
// never other plaintext.
func TestAgeDamagedCiphertext(t *testing.T) {
	id := ageTestIdentity(t)
	keys := ageTestKeys(t, []*age.X25519Identity{id}, id)
	data := ageTestData(t, 2<<20)
	stored, art := ageSeal(t, keys, data)
	require.Greater(t, len(stored), 4*(64<<10), "several chunks")
	header := bytes.Index(stored, []byte("\n--- ")) + 1
	header += bytes.IndexByte(stored[header:], '\n') + 1 + 16 // the MAC line, then the 16-byte nonce

	randomOffset := func(from, to int) int {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(to-from)))
		require.NoError(t, err)
		return from + int(n.Int64())
	}
	flip := func(off int) []byte {
		b := bytes.Clone(stored)
		b[off] ^= 0x01
		return b
	}
	cases := map[string][]byte{
		"cut in the middle":             stored[:len(stored)/2],
		"cut at a chunk boundary":       stored[:header+2*(64<<10+16)],
		"last byte missing":             stored[:len(stored)-1],
		"only the header":               stored[:header],
		"cut in the header":             stored[:header/2],
		"empty":                         nil,
		"a bit flipped in the payload":  flip(randomOffset(header, len(stored))),
		"a bit flipped in the last tag": flip(len(stored) - 1),
		"a bit flipped in the header":   flip(randomOffset(30, header-20)),
		"trailing bytes":                append(bytes.Clone(stored), 0),
		"a zstd frame, not age":         func() []byte { b, _ := ageSeal(t, nil, data); return b }(),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := ageOpen(keys, art, b)
			require.Error(t, err, "damage must not decode")
			assert.Nil(t, AgeKeyError(err), "damage is not a key problem: %v", err)
			assert.True(t, isAgeDataError(err) || strings.Contains(err.Error(), "zstd"), "an error of the data: %v", err)
			assert.False(t, bytes.Equal(got, data))
		})
	}
}

// TestAgeSourceErrorsPassThrough: an error of the stored bytes' reader (the
// store, ctx) comes out as itself, not as a decryption verdict.
func TestAgeSourceErrorsPassThrough(t *testing.T) {
	id := ageTestIdentity(t)
	keys := ageTestKeys(t, []*age.X25519Identity{id}, id)
	stored, art := ageSeal(t, keys, ageTestData(t, 1<<20))
	boom := errors.New("connection reset by store")
	for _, at := range []int{10, len(stored) / 2} {
		r := io.MultiReader(bytes.NewReader(stored[:at]), &failingReader{boom})
		plain, closeDec, err := keys.openArtifact(r, art)
		if err == nil {
			_, err = io.ReadAll(plain)
		}
		closeDec()
		require.ErrorIs(t, err, boom)
		assert.False(t, isAgeDataError(err), "%v", err)
	}
}

type failingReader struct{ err error }

func (f *failingReader) Read([]byte) (int, error) { return 0, f.err }

// TestStageDumpEncrypted runs the dump readers' download (stageDump, used by
// VerifyDump, RestoreDatabase and the table restore) on encrypted dumps in a
// file store: decrypted with the right identity, refused before any download
// with another, and a damaged object reported as a finding.
func TestStageDumpEncrypted(t *testing.T) {
	ctx := context.Background()
	st, err := store.NewFS(t.TempDir())
	require.NoError(t, err)
	owner, other := ageTestIdentity(t), ageTestIdentity(t)
	writer := ageTestKeys(t, []*age.X25519Identity{owner})
	data := ageTestData(t, 1<<20)
	key := PostgresKey("2026-11-21T02-00-00Z", "kohakku-controller")
	c, err := putZstd(ctx, st, key, io.NopCloser(bytes.NewReader(data)), ZstdOptions{}, writer, nil)
	require.NoError(t, err)
	art := Artifact{Kind: KindPostgres, Source: "kohakku-controller", Key: key, Size: c.Size, RawSize: c.RawSize, SHA256: c.SHA256, Compression: CompressionZstd}
	writer.stamp(&art)
	require.NoError(t, checkDumpArtifact(art))
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	stage := func(t *testing.T, keys *AgeKeys, a Artifact) (string, fetched, error) {
		var stored, raw atomic.Int64
		path, f, remove, err := stageDump(ctx, st, keys, a, "drflow-test-*.dump", &stored, &raw)
		t.Cleanup(remove)
		return path, f, err
	}

	t.Run("right identity", func(t *testing.T) {
		path, f, err := stage(t, ageTestKeys(t, nil, owner), art)
		require.NoError(t, err)
		assert.Equal(t, fetched{checksumOK: true}, f)
		got, err := os.ReadFile(path)
		require.NoError(t, err)
		assert.True(t, bytes.Equal(data, got))
	})
	t.Run("another identity: refused before the download", func(t *testing.T) {
		_, _, err := stage(t, ageTestKeys(t, nil, other), art)
		requireAppErr(t, err, ErrAgeIdentityMismatch, "set 2026-11-21T02-00-00Z", "none of the identities in DRFLOW_AGE_IDENTITY_FILE")
		left, _ := filepath.Glob(filepath.Join(tmp, "drflow-test-*"))
		assert.Empty(t, left, "no temporary file")
	})
	t.Run("no identity", func(t *testing.T) {
		_, _, err := stage(t, nil, art)
		requireAppErr(t, err, ErrAgeIdentityMissing, "DRFLOW_AGE_IDENTITY_FILE", art.RecipientFingerprints[0])
	})
	t.Run("damaged object", func(t *testing.T) {
		stored, err := st.Get(ctx, key)
		require.NoError(t, err)
		b, err := io.ReadAll(stored)
		stored.Close()
		require.NoError(t, err)
		b[len(b)/2] ^= 0x80
		bad := art
		bad.Key = PostgresKey("2026-11-21T02-00-00Z", "damaged")
		_, err = st.Put(ctx, bad.Key, bytes.NewReader(b), store.PutOptions{})
		require.NoError(t, err)

		_, f, err := stage(t, ageTestKeys(t, nil, owner), bad)
		require.NoError(t, err)
		assert.Equal(t, ErrChecksumMismatch, f.kind, "bit rot: the checksum tells first")

		sum := sha256.Sum256(b)
		bad.SHA256 = hex.EncodeToString(sum[:]) // as if stored damaged
		_, f, err = stage(t, ageTestKeys(t, nil, owner), bad)
		require.NoError(t, err)
		assert.Equal(t, ErrArchiveCorrupt, f.kind)
		assert.True(t, f.checksumOK)
		assert.Contains(t, f.problem, "do not decrypt")
	})
}

// TestListingEncrypted: a listing written encrypted reads back through
// readListing; ReadListing (unencrypted listings only) and another identity
// do not read it.
func TestListingEncrypted(t *testing.T) {
	ctx := context.Background()
	st, err := store.NewFS(t.TempDir())
	require.NoError(t, err)
	id, other := ageTestIdentity(t), ageTestIdentity(t)
	o := &Objects{Store: st, Age: ageTestKeys(t, []*age.X25519Identity{id})}
	key := ListingKey("2026-11-21T02-00-00Z", "kohakku")
	lw := o.startListing(ctx, key)
	var want []ListedObject
	for i := range 500 {
		obj := ListedObject{Key: "briefs/" + strings.Repeat("x", i%7) + hex.EncodeToString([]byte{byte(i >> 8), byte(i)}), Size: int64(i), ETag: "e"}
		want = append(want, obj)
		require.NoError(t, lw.add(obj))
	}
	c, err := lw.commit()
	require.NoError(t, err)
	lst := Artifact{Kind: KindListing, Source: "kohakku", Key: key, Size: c.Size, SHA256: c.SHA256, Compression: CompressionZstd}
	o.Age.stamp(&lst)
	require.Equal(t, EncryptionAge, lst.Encryption)

	read := func(keys *AgeKeys) ([]ListedObject, error) {
		rc, err := st.Get(ctx, key)
		require.NoError(t, err)
		defer rc.Close()
		var got []ListedObject
		err = keys.readListing(rc, lst, func(obj ListedObject) error { got = append(got, obj); return nil })
		return got, err
	}
	got, err := read(ageTestKeys(t, nil, id))
	require.NoError(t, err)
	assert.Equal(t, want, got)

	_, err = read(ageTestKeys(t, nil, other))
	requireAppErr(t, err, ErrAgeIdentityMismatch, "set 2026-11-21T02-00-00Z")

	rc, err := st.Get(ctx, key)
	require.NoError(t, err)
	defer rc.Close()
	assert.Error(t, ReadListing(rc, func(ListedObject) error { return nil }), "an encrypted listing is no zstd stream")
}

// TestVerifyRDBEncrypted: an RDB stored encrypted verifies with the identity
// and is refused, before the download, without it.
func TestVerifyRDBEncrypted(t *testing.T) {
	ctx := context.Background()
	st, err := store.NewFS(t.TempDir())
	require.NoError(t, err)
	id, other := ageTestIdentity(t), ageTestIdentity(t)
	rdb := rdbNew(10).op(rdbOpSelectDB).len(0).
		kv(rdbTypeString, "a", func(b *rdbBuilder) { b.str("1") }).
		kv(rdbTypeString, "b", func(b *rdbBuilder) { b.str("2") }).eof()
	var stored bytes.Buffer
	sum, out, err := redisCompressScan(&stored, bytes.NewReader(rdb), ageTestKeys(t, []*age.X25519Identity{id}))
	require.NoError(t, err)
	require.True(t, bytes.HasPrefix(stored.Bytes(), []byte("age-encryption.org/v1\n")))
	key := RedisKey("2026-11-21T02-00-00Z", "default")
	_, err = st.Put(ctx, key, bytes.NewReader(stored.Bytes()), store.PutOptions{})
	require.NoError(t, err)
	art := Artifact{Kind: KindRedis, Source: "default", Key: key, Size: out.size, SHA256: out.sha256, RawSize: sum.Bytes,
		Compression: CompressionZstd, KeyCount: 2, RowCounts: map[string]int64{"db0": 2}}
	ageTestKeys(t, []*age.X25519Identity{id}).stamp(&art)

	r := &Redis{Store: st, Age: ageTestKeys(t, nil, id)}
	run := verifyRunRDB(t, ctx, r, VerifyRDBInput{SetID: "2026-11-21T02-00-00Z", Artifact: art}, nil)
	require.NoError(t, run.err)
	assert.True(t, run.chk.Passed, run.chk.Problems)
	assert.Equal(t, int64(2), run.chk.ParsedKeys)

	r.Age = ageTestKeys(t, nil, other)
	run = verifyRunRDB(t, ctx, r, VerifyRDBInput{SetID: "2026-11-21T02-00-00Z", Artifact: art}, nil)
	require.Error(t, run.err)
	var app *temporal.ApplicationError
	require.True(t, errors.As(run.err, &app))
	assert.Equal(t, ErrAgeIdentityMismatch, app.Type())
	assert.True(t, app.NonRetryable())

	// Damaged after the manifest was written, re-hashed: a finding, not an error.
	b := bytes.Clone(stored.Bytes())
	b[len(b)-5] ^= 0x10
	bad := art
	bad.Key = RedisKey("2026-11-21T02-00-00Z", "damaged")
	h := sha256.Sum256(b)
	bad.SHA256 = hex.EncodeToString(h[:])
	_, err = st.Put(ctx, bad.Key, bytes.NewReader(b), store.PutOptions{})
	require.NoError(t, err)
	r.Age = ageTestKeys(t, nil, id)
	run = verifyRunRDB(t, ctx, r, VerifyRDBInput{SetID: "2026-11-21T02-00-00Z", Artifact: bad}, nil)
	require.NoError(t, run.err)
	assert.False(t, run.chk.Passed)
	assert.Contains(t, strings.Join(run.chk.Problems, "; "), "cannot decrypt (age)")
}

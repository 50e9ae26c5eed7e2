package activities

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kohakku/drflow/internal/stack/stacktest"
)

func TestCRC64Jones(t *testing.T) {
	// The check value of Redis' crc64.c self-test.
	assert.Equal(t, uint64(0xe9c6d914c4b8d9ca), crc64Jones(0, []byte("123456789")))

	bytewise := func(crc uint64, p []byte) uint64 {
		for _, v := range p {
			crc = crc64JonesTable[0][byte(crc)^v] ^ crc>>8
		}
		return crc
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 7, 8, 9, 63, 64, 65, 1000, 4096 + 3} {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		want := bytewise(0, p)
		assert.Equal(t, want, crc64Jones(0, p), "len %d", n)
		// Incremental updates give the same result as one call.
		if n > 5 {
			assert.Equal(t, want, crc64Jones(crc64Jones(0, p[:5]), p[5:]), "len %d split", n)
		}
	}
}

// ---- hand-built RDB files: every type and opcode, also those Redis 7.0 never writes ----

// rdbBuilder writes RDB files for tests, independently of Redis, so that
// types from other Redis versions are covered too.
type rdbBuilder struct{ bytes.Buffer }

func rdbNew(version int) *rdbBuilder {
	b := &rdbBuilder{}
	fmt.Fprintf(b, "REDIS%04d", version)
	return b
}

func (b *rdbBuilder) op(op byte) *rdbBuilder { b.WriteByte(op); return b }

func (b *rdbBuilder) len(n uint64) *rdbBuilder {
	switch {
	case n < 1<<6:
		b.WriteByte(byte(n))
	case n < 1<<14:
		b.WriteByte(byte(n>>8) | 0x40)
		b.WriteByte(byte(n))
	case n <= math.MaxUint32:
		b.WriteByte(0x80)
		b.Write(binary.BigEndian.AppendUint32(nil, uint32(n)))
	default:
		b.WriteByte(0x81)
		b.Write(binary.BigEndian.AppendUint64(nil, n))
	}
	return b
}

// len32 and len64 write small lengths in the long forms.
func (b *rdbBuilder) len32(n uint32) *rdbBuilder {
	b.WriteByte(0x80)
	b.Write(binary.BigEndian.AppendUint32(nil, n))
	return b
}

func (b *rdbBuilder) len64(n uint64) *rdbBuilder {
	b.WriteByte(0x81)
	b.Write(binary.BigEndian.AppendUint64(nil, n))
	return b
}

func (b *rdbBuilder) str(s string) *rdbBuilder { b.len(uint64(len(s))); b.WriteString(s); return b }

func (b *rdbBuilder) int8(v int8) *rdbBuilder { b.WriteByte(0xC0); b.WriteByte(byte(v)); return b }

func (b *rdbBuilder) int16(v int16) *rdbBuilder {
	b.WriteByte(0xC1)
	b.Write(binary.LittleEndian.AppendUint16(nil, uint16(v)))
	return b
}

func (b *rdbBuilder) int32(v int32) *rdbBuilder {
	b.WriteByte(0xC2)
	b.Write(binary.LittleEndian.AppendUint32(nil, uint32(v)))
	return b
}

// lzf writes an LZF-encoded string; the scanner never decompresses, so the
// payload is arbitrary.
func (b *rdbBuilder) lzf(clen, ulen int) *rdbBuilder {
	b.WriteByte(0xC3)
	b.len(uint64(clen)).len(uint64(ulen))
	b.Write(bytes.Repeat([]byte{0x5a}, clen))
	return b
}

func (b *rdbBuilder) raw(p ...byte) *rdbBuilder { b.Write(p); return b }

func (b *rdbBuilder) zeros(n int) *rdbBuilder { b.Write(make([]byte, n)); return b }

// kv writes a key of type typ; the value is written by val.
func (b *rdbBuilder) kv(typ byte, key string, val func(*rdbBuilder)) *rdbBuilder {
	b.op(typ).str(key)
	val(b)
	return b
}

// eof ends the file with the EOF opcode and a correct checksum.
func (b *rdbBuilder) eof() []byte {
	b.WriteByte(rdbOpEOF)
	sum := crc64Jones(0, b.Bytes())
	b.Write(binary.LittleEndian.AppendUint64(nil, sum))
	return bytes.Clone(b.Bytes())
}

func TestScanRDBHandBuilt(t *testing.T) {
	blob := func(b *rdbBuilder) { b.str("\x0b\x00\x00\x00blob-of-a-listpack") }
	cases := []struct {
		name string
		rdb  []byte
		keys map[int]int64
	}{{
		name: "empty",
		rdb:  rdbNew(10).eof(),
		keys: map[int]int64{},
	}, {
		name: "all value types",
		rdb: rdbNew(12).
			op(rdbOpAux).str("redis-ver").str("7.4.1").
			op(rdbOpAux).str("redis-bits").int8(64).
			op(rdbOpAux).str("ctime").int32(1700000000).
			op(rdbOpAux).str("lua").lzf(30, 300).
			op(rdbOpFunction2).str("#!lua name=lib\nredis.register_function('f', function() return 1 end)").
			op(rdbOpModuleAux).len(0x1234567890).len(rdbModuleUInt).len(2).
			len(rdbModuleString).str("aux").len(rdbModuleEOF).
			op(rdbOpSelectDB).len(0).
			op(rdbOpResizeDB).len(25).len(2).
			kv(rdbTypeString, "s", func(b *rdbBuilder) { b.str("v") }).
			kv(rdbTypeString, "i8", func(b *rdbBuilder) { b.int8(-5) }).
			kv(rdbTypeString, "i16", func(b *rdbBuilder) { b.int16(-3000) }).
			kv(rdbTypeString, "i32", func(b *rdbBuilder) { b.int32(1 << 30) }).
			kv(rdbTypeString, "lzf", func(b *rdbBuilder) { b.lzf(40, 500) }).
			kv(rdbTypeString, "long", func(b *rdbBuilder) { b.str(strings.Repeat("x", 20000)) }).
			op(rdbOpExpireMS).zeros(8).
			kv(rdbTypeString, "ttl-ms", func(b *rdbBuilder) { b.str("v") }).
			op(rdbOpExpire).zeros(4).
			kv(rdbTypeString, "ttl-s", func(b *rdbBuilder) { b.str("v") }).
			op(rdbOpIdle).len(1000).
			op(rdbOpFreq).raw(7).
			kv(rdbTypeList, "list", func(b *rdbBuilder) { b.len(3).str("a").int8(1).lzf(3, 30) }).
			kv(rdbTypeSet, "set", func(b *rdbBuilder) { b.len32(2).str("a").str("b") }).
			kv(rdbTypeZSet, "zset", func(b *rdbBuilder) {
				b.len(4).str("a").raw(3, '1', '.', '5').str("nan").raw(253).str("+inf").raw(254).str("-inf").raw(255)
			}).
			kv(rdbTypeHash, "hash", func(b *rdbBuilder) { b.len64(2).str("f1").str("v1").str("f2").int16(2) }).
			kv(rdbTypeZSet2, "zset2", func(b *rdbBuilder) { b.len(2).str("a").zeros(8).str("b").zeros(8) }).
			kv(rdbTypeModule2, "module", func(b *rdbBuilder) {
				b.len(0xABCDEF).len(rdbModuleSInt).len(5).len(rdbModuleUInt).len(6).
					len(rdbModuleFloat).zeros(4).len(rdbModuleDouble).zeros(8).
					len(rdbModuleString).str("x").len(rdbModuleEOF)
			}).
			kv(rdbTypeHashZipmap, "zipmap", blob).
			kv(rdbTypeListZiplist, "ziplist", blob).
			kv(rdbTypeSetIntset, "intset", blob).
			kv(rdbTypeZSetZiplist, "zset-ziplist", blob).
			kv(rdbTypeHashZiplist, "hash-ziplist", blob).
			kv(rdbTypeListQuicklist, "quicklist", func(b *rdbBuilder) { b.len(2).str("zl1").lzf(4, 40) }).
			kv(rdbTypeHashListpack, "hash-lp", blob).
			kv(rdbTypeZSetListpack, "zset-lp", blob).
			kv(rdbTypeListQuicklist2, "quicklist2", func(b *rdbBuilder) { b.len(2).len(2).str("packed").len(1).str("plain") }).
			kv(rdbTypeSetListpack, "set-lp", blob).
			kv(rdbTypeHashMetadataPreGA, "hash-md-rc", func(b *rdbBuilder) { b.len(2).len(0).str("f").str("v").len(1700000000000).str("g").str("w") }).
			kv(rdbTypeHashLPExPreGA, "hash-lpex-rc", blob).
			kv(rdbTypeHashMetadata, "hash-md", func(b *rdbBuilder) { b.zeros(8).len(1).len(5).str("f").str("v") }).
			kv(rdbTypeHashLPEx, "hash-lpex", func(b *rdbBuilder) { b.zeros(8); blob(b) }).
			op(rdbOpSelectDB).len(3).
			op(rdbOpSlotInfo).len(100).len(1).len(0).
			kv(rdbTypeString, "db3", func(b *rdbBuilder) { b.str("v") }).
			eof(),
		keys: map[int]int64{0: 28, 3: 1},
	}, {
		name: "streams v1 v2 v3",
		rdb: func() []byte {
			b := rdbNew(11).op(rdbOpSelectDB).len(5)
			for _, typ := range []byte{rdbTypeStreamListpacks, rdbTypeStreamListpacks2, rdbTypeStreamListpacks3} {
				b.kv(typ, fmt.Sprintf("stream%d", typ), func(b *rdbBuilder) {
					b.len(2) // listpack nodes
					for range 2 {
						b.len(16).zeros(16) // master ID
						b.str("listpack")
					}
					b.len(10).len(1700000000000).len(3) // length, last ID
					if typ >= rdbTypeStreamListpacks2 {
						b.len(1).len(0).len(0).len(0).len(10) // first ID, max deleted ID, entries added
					}
					b.len(1) // groups
					b.str("group").len(1700000000000).len(1)
					if typ >= rdbTypeStreamListpacks2 {
						b.len(4) // entries read
					}
					b.len(2) // PEL
					for range 2 {
						b.zeros(16).zeros(8).len(1)
					}
					b.len(1).str("consumer").zeros(8) // consumers, seen time
					if typ >= rdbTypeStreamListpacks3 {
						b.zeros(8) // active time
					}
					b.len(2).zeros(32) // consumer PEL
				})
			}
			return b.eof()
		}(),
		keys: map[int]int64{5: 3},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// One byte per Read: every boundary inside every field.
			sum, err := scanRDB(iotest.OneByteReader(bytes.NewReader(c.rdb)))
			require.NoError(t, err)
			assert.Equal(t, c.keys, sum.Keys)
			assert.Equal(t, int64(len(c.rdb)), sum.Bytes)
			assert.NotZero(t, sum.Checksum)
		})
	}

	t.Run("summary", func(t *testing.T) {
		sum, err := scanRDB(bytes.NewReader(cases[1].rdb))
		require.NoError(t, err)
		assert.Equal(t, 12, sum.Version)
		assert.Equal(t, "7.4.1", sum.RedisVersion)
		assert.Equal(t, map[int]int64{0: 25}, sum.Sizes)
		assert.Equal(t, int64(29), sum.TotalKeys())
		assert.Equal(t, []int{0, 3}, sum.DBs())
	})
}

func TestScanRDBRejects(t *testing.T) {
	good := rdbNew(10).op(rdbOpSelectDB).len(0).kv(rdbTypeString, "k", func(b *rdbBuilder) { b.str("v") }).eof()
	flip := func(p []byte, i int) []byte { p = bytes.Clone(p); p[i] ^= 0x10; return p }
	noSum := func(p []byte) []byte { p = bytes.Clone(p); copy(p[len(p)-8:], make([]byte, 8)); return p }

	cases := []struct {
		name string
		rdb  []byte
		want error
		msg  string
	}{
		{"not an RDB", []byte("GET / HTTP/1.1\r\n\r\n"), errRDBCorrupt, "signature"},
		{"bad version", []byte("REDIS00x1\xff"), errRDBCorrupt, "format version"},
		{"version 0", []byte("REDIS0000\xff"), errRDBCorrupt, "format version"},
		{"empty", nil, errRDBTruncated, ""},
		{"header only", []byte("REDIS0010"), errRDBTruncated, ""},
		{"no checksum", good[:len(good)-8], errRDBTruncated, ""},
		{"short checksum", good[:len(good)-3], errRDBTruncated, ""},
		{"value flipped", flip(good, len(good)-10), errRDBCorrupt, "checksum mismatch"},
		{"checksum flipped", flip(good, len(good)-1), errRDBCorrupt, "checksum mismatch"},
		{"string encoding as length", rdbNew(10).op(rdbOpSelectDB).raw(0xC0).eof(), errRDBCorrupt, "string encoding where a length belongs"},
		{"bad length prefix", rdbNew(10).kv(rdbTypeString, "k", func(b *rdbBuilder) { b.raw(0x85) }).eof(), errRDBCorrupt, "length prefix 0x85"},
		{"bad string encoding", rdbNew(10).kv(rdbTypeString, "k", func(b *rdbBuilder) { b.raw(0xC7) }).eof(), errRDBCorrupt, "string encoding 7"},
		{"empty LZF", rdbNew(10).kv(rdbTypeString, "k", func(b *rdbBuilder) { b.lzf(0, 10) }).eof(), errRDBCorrupt, "LZF"},
		{"huge SELECTDB", rdbNew(10).op(rdbOpSelectDB).len(1 << 40).eof(), errRDBCorrupt, "SELECTDB"},
		{"bad quicklist container", rdbNew(10).kv(rdbTypeListQuicklist2, "l", func(b *rdbBuilder) { b.len(1).len(3).str("x") }).eof(), errRDBCorrupt, "container 3"},
		{"bad stream node key", rdbNew(10).kv(rdbTypeStreamListpacks2, "s", func(b *rdbBuilder) { b.len(1).str("short") }).eof(), errRDBCorrupt, "16-byte ID"},
		{"bad module opcode", rdbNew(10).kv(rdbTypeModule2, "m", func(b *rdbBuilder) { b.len(1).len(9) }).eof(), errRDBCorrupt, "module value opcode 9"},
		{"bad module aux", rdbNew(10).op(rdbOpModuleAux).len(1).len(rdbModuleSInt).len(1).len(0).eof(), errRDBCorrupt, "when-opcode"},
		{"length past the end", rdbNew(10).kv(rdbTypeString, "k", func(b *rdbBuilder) { b.len(1 << 40) }).eof(), errRDBTruncated, ""},
		// Intact files (the checksum matches) with what the reader does not know.
		{"new value type", rdbNew(13).kv(30, "k", func(b *rdbBuilder) { b.str("v") }).eof(), errRDBUnsupported, "value type 30"},
		{"new opcode", rdbNew(13).op(0xF0).len(1).eof(), errRDBUnsupported, "opcode 0xF0"},
		{"module pre-GA", rdbNew(8).kv(rdbTypeModulePreGA, "k", func(b *rdbBuilder) { b.len(1) }).eof(), errRDBUnsupported, "pre-release module"},
		{"function pre-GA", rdbNew(10).op(rdbOpFunctionPre).str("lib").eof(), errRDBUnsupported, "pre-release function"},
		// The same, but a flipped byte makes the type up: corrupt, not unsupported.
		{"new value type, bad checksum", flip(rdbNew(13).kv(30, "k", func(b *rdbBuilder) { b.str("v") }).eof(), 13), errRDBCorrupt, "checksum does not match"},
		{"unknown type in a truncated file", rdbNew(13).kv(30, "k", func(b *rdbBuilder) { b.str("v") }).Bytes(), errRDBCorrupt, "checksum does not match"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := scanRDB(bytes.NewReader(c.rdb))
			require.ErrorIs(t, err, c.want)
			assert.ErrorContains(t, err, c.msg)
		})
	}

	t.Run("checksum disabled", func(t *testing.T) {
		// rdbchecksum no writes zeros; Redis loads such files unchecked, so do we.
		sum, err := scanRDB(bytes.NewReader(noSum(good)))
		require.NoError(t, err)
		assert.Zero(t, sum.Checksum)
		assert.Equal(t, map[int]int64{0: 1}, sum.Keys)
	})
	t.Run("read error", func(t *testing.T) {
		boom := errors.New("connection reset")
		_, err := scanRDB(io.MultiReader(bytes.NewReader(good[:20]), iotest.ErrReader(boom)))
		require.ErrorIs(t, err, boom)
		for _, e := range []error{errRDBCorrupt, errRDBTruncated, errRDBUnsupported} {
			assert.NotErrorIs(t, err, e)
		}
	})
	t.Run("data after the checksum", func(t *testing.T) {
		sum, err := scanRDB(iotest.OneByteReader(bytes.NewReader(append(bytes.Clone(good), "+trailing"...))))
		require.ErrorIs(t, err, errRDBCorrupt)
		assert.ErrorContains(t, err, fmt.Sprintf("at byte %d: data after the RDB's checksum", len(good)))
		assert.Equal(t, int64(len(good)), sum.Bytes)
	})
	t.Run("read error after the checksum", func(t *testing.T) {
		boom := errors.New("connection reset")
		_, err := scanRDB(io.MultiReader(bytes.NewReader(good), iotest.ErrReader(boom)))
		require.ErrorIs(t, err, boom)
	})
}

// ---- real RDB files written by redis-server ----

// redisFill writes keys of every type and encoding Redis 7.0 saves into db 0
// and db 3 (strings raw, integer and LZF; lists; intset and hashtable sets;
// listpack and skiplist zsets; listpack and hashtable hashes; streams with
// consumer groups and pending entries; TTLs) and a function library. n
// scales the number of keys: about 13 per unit in db 0 and 4 in db 3.
func redisFill(t testing.TB, addr, password string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rng := rand.New(rand.NewPCG(uint64(n), 42))
	random := func(size int) string {
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return string(b)
	}
	db0 := redis.NewClient(&redis.Options{Addr: addr, Password: password})
	defer db0.Close()
	db3 := redis.NewClient(&redis.Options{Addr: addr, Password: password, DB: 3})
	defer db3.Close()

	for i := range n {
		p := db0.Pipeline()
		k := func(kind string) string { return fmt.Sprintf("%s:%d", kind, i) }
		p.Set(ctx, k("str"), "value-"+strings.Repeat("v", i%20), 0)
		p.Set(ctx, k("int"), i*7919-50000, 0)                                                // integer encodings
		p.Set(ctx, k("big"), strings.Repeat(fmt.Sprintf("lorem ipsum %d dolor ", i), 12), 0) // LZF
		p.Set(ctx, k("bin"), random(100+i%50), 0)                                            // incompressible
		p.Set(ctx, k("ttl"), "expiring", time.Hour)
		p.RPush(ctx, k("list"), "a", "b", i, "d")
		p.SAdd(ctx, k("intset"), 1, 2, 3, i)
		p.SAdd(ctx, k("strset"), "x", "y", fmt.Sprint("z", i))
		p.ZAdd(ctx, k("zset"), redis.Z{Score: 1.5, Member: "a"}, redis.Z{Score: math.Inf(1), Member: "b"}, redis.Z{Score: float64(i), Member: "c"})
		p.HSet(ctx, k("hash"), "f1", "v1", "f2", i, "f3", "v3")
		p.HSet(ctx, k("hashlongval"), "f", strings.Repeat("long value ", 10)) // > hash-max-listpack-value
		p.PExpire(ctx, k("hash"), 2*time.Hour)
		s := k("stream")
		for j := range 5 {
			p.XAdd(ctx, &redis.XAddArgs{Stream: s, Values: []any{"n", j, "payload", "entry"}})
		}
		p.XGroupCreate(ctx, s, "g1", "0")
		p.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g1", Consumer: "c1", Streams: []string{s, ">"}, Count: 3})
		p.XGroupCreate(ctx, s, "g2", "$")
		if i%10 == 0 { // big ones: other encodings
			big := make([]any, 0, 1200)
			for j := range 600 {
				big = append(big, fmt.Sprint("field", j), fmt.Sprint("value", j))
			}
			p.HSet(ctx, k("bighash"), big...)         // hashtable
			p.RPush(ctx, k("biglist"), big...)        // several quicklist nodes
			p.SAdd(ctx, k("bigstrset"), big[:400]...) // hashtable set
			ints := make([]any, 600)
			for j := range ints {
				ints[j] = j * 3
			}
			p.SAdd(ctx, k("bigintset"), ints...) // > set-max-intset-entries: hashtable
			zs := make([]redis.Z, 200)
			for j := range zs {
				zs[j] = redis.Z{Score: float64(j) / 3, Member: fmt.Sprint("m", j)}
			}
			p.ZAdd(ctx, k("bigzset"), zs...) // skiplist
			for j := range 300 {
				p.XAdd(ctx, &redis.XAddArgs{Stream: k("bigstream"), Values: []any{"j", j}})
			}
		}
		_, err := p.Exec(ctx)
		require.NoError(t, err)

		p = db3.Pipeline()
		p.Set(ctx, k("db3:str"), "three", 0)
		p.HSet(ctx, k("db3:hash"), "a", 1)
		p.RPush(ctx, k("db3:list"), 1, 2, 3)
		p.Set(ctx, k("db3:ttl"), "x", 3*time.Hour)
		_, err = p.Exec(ctx)
		require.NoError(t, err)
	}
	err := db0.FunctionLoadReplace(ctx, "#!lua name=drflowtest\nredis.register_function('drflow_one', function() return 1 end)").Err()
	require.NoError(t, err)
}

// redisDBSizes returns DBSIZE of every non-empty database.
func redisDBSizes(t testing.TB, addr, password string) map[int]int64 {
	t.Helper()
	ctx := context.Background()
	sizes := map[int]int64{}
	for db := range 16 {
		c := redis.NewClient(&redis.Options{Addr: addr, Password: password, DB: db})
		n, err := c.DBSize(ctx).Result()
		c.Close()
		require.NoError(t, err)
		if n > 0 {
			sizes[db] = n
		}
	}
	return sizes
}

// rdbSaved fills a fresh Redis, saves it and returns its dump.rdb and the
// key count of each database.
func rdbSaved(t *testing.T, n int) ([]byte, map[int]int64) {
	t.Helper()
	srv := stacktest.Redis(t)
	redisFill(t, srv.Addr(), "", n)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer c.Close()
	require.NoError(t, c.Save(context.Background()).Err())
	rdb, err := os.ReadFile(filepath.Join(srv.Dir(), "dump.rdb"))
	require.NoError(t, err)
	return rdb, redisDBSizes(t, srv.Addr(), "")
}

func TestScanRDBFromRedis(t *testing.T) {
	rdb, sizes := rdbSaved(t, 40)
	sum, err := scanRDB(bytes.NewReader(rdb))
	require.NoError(t, err)
	assert.Equal(t, sizes, sum.Keys)
	assert.Equal(t, sizes, sum.Sizes, "RESIZEDB hints")
	assert.Equal(t, int64(len(rdb)), sum.Bytes)
	assert.NotZero(t, sum.Checksum)
	assert.GreaterOrEqual(t, sum.Version, 10)
	assert.NotEmpty(t, sum.RedisVersion)
	t.Logf("RDB v%d from redis %s: %d bytes, keys %v", sum.Version, sum.RedisVersion, len(rdb), sum.Keys)
}

func TestScanRDBCatchesDamage(t *testing.T) {
	// A small file with every encoding: each case scans it whole.
	rdb, sizes := rdbSaved(t, 2)
	sum, err := scanRDB(bytes.NewReader(rdb))
	require.NoError(t, err)
	require.Equal(t, sizes, sum.Keys)
	t.Logf("%d bytes, keys %v", len(rdb), sum.Keys)

	t.Run("truncated", func(t *testing.T) {
		// Every length up to the first 2 KiB and the last 512 bytes, and a sample between.
		var cuts []int
		for i := 0; i < len(rdb); i++ {
			if i < 2048 || i > len(rdb)-512 || i%61 == 0 {
				cuts = append(cuts, i)
			}
		}
		for _, n := range cuts {
			_, err := scanRDB(bytes.NewReader(rdb[:n]))
			if !errors.Is(err, errRDBTruncated) && !errors.Is(err, errRDBCorrupt) {
				t.Fatalf("cut at %d of %d bytes: got %v, want truncated or corrupt", n, len(rdb), err)
			}
		}
	})
	t.Run("bit flipped", func(t *testing.T) {
		// Every bit of the first 128 and last 64 bytes, and 1000 random bits:
		// the CRC-64 catches any single flipped bit; a flip that derails the
		// walk is caught earlier.
		rng := rand.New(rand.NewPCG(7, 7))
		var bits []int
		for i := 0; i < 8*len(rdb); i++ {
			if i < 8*128 || i >= 8*(len(rdb)-64) {
				bits = append(bits, i)
			}
		}
		for range 1000 {
			bits = append(bits, rng.IntN(8*len(rdb)))
		}
		bad := bytes.Clone(rdb)
		for _, bit := range bits {
			bad[bit/8] ^= 1 << (bit % 8)
			_, err := scanRDB(bytes.NewReader(bad))
			bad[bit/8] ^= 1 << (bit % 8)
			if !errors.Is(err, errRDBTruncated) && !errors.Is(err, errRDBCorrupt) {
				t.Fatalf("bit %d (byte %d) flipped: got %v, want corrupt or truncated", bit, bit/8, err)
			}
		}
	})
}

func FuzzScanRDB(f *testing.F) {
	f.Add(rdbNew(10).op(rdbOpSelectDB).len(0).kv(rdbTypeString, "k", func(b *rdbBuilder) { b.str("v") }).eof())
	f.Add(rdbNew(11).kv(rdbTypeStreamListpacks3, "s", func(b *rdbBuilder) { b.len(0).len(0).len(0).len(0).len(0).len(0).len(0).len(0).len(0).len(0) }).eof())
	f.Add([]byte("REDIS0010\xfe\x00\xfb\x01\x00\x00\x01k\x01v\xff"))
	f.Fuzz(func(t *testing.T, p []byte) {
		sum, err := scanRDB(bytes.NewReader(p))
		if err == nil && sum.Bytes > int64(len(p)) {
			t.Fatalf("consumed %d of %d bytes", sum.Bytes, len(p))
		}
	})
}

func TestRedisEOFMarkReader(t *testing.T) {
	mark := []byte(strings.Repeat("0123456789", 4))
	payload := bytes.Repeat([]byte("rdb-bytes:"), 100_000) // more than the reader's buffer
	cases := []struct {
		name string
		src  func() io.Reader
		want []byte
		err  error
	}{
		{"mark at the end", func() io.Reader { return bytes.NewReader(append(bytes.Clone(payload), mark...)) }, payload, nil},
		{"byte by byte", func() io.Reader {
			return iotest.OneByteReader(bytes.NewReader(append(bytes.Clone(payload[:5000]), mark...)))
		}, payload[:5000], nil},
		{"replication stream after the mark", func() io.Reader {
			return iotest.HalfReader(bytes.NewReader(append(append(bytes.Clone(payload), mark...), "*1\r\n$4\r\nPING\r\n"...)))
		}, payload, nil},
		{"part of the mark in the data", func() io.Reader {
			return bytes.NewReader(append([]byte("x"+string(mark[:39])+"y"), mark...))
		}, []byte("x" + string(mark[:39]) + "y"), nil},
		{"empty payload", func() io.Reader { return bytes.NewReader(mark) }, nil, nil},
		{"connection closed before the mark", func() io.Reader { return bytes.NewReader(payload) }, nil, io.ErrUnexpectedEOF},
		{"mark cut short", func() io.Reader { return bytes.NewReader(append(bytes.Clone(payload), mark[:39]...)) }, nil, io.ErrUnexpectedEOF},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := io.ReadAll(newRedisEOFMarkReader(c.src(), mark))
			if c.err != nil {
				require.ErrorIs(t, err, c.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, len(c.want), len(got))
			assert.True(t, bytes.Equal(c.want, got))
		})
	}
}

func TestRedisExactReader(t *testing.T) {
	got, err := io.ReadAll(&redisExactReader{r: strings.NewReader("0123456789tail"), n: 10})
	require.NoError(t, err)
	assert.Equal(t, "0123456789", string(got))
	_, err = io.ReadAll(&redisExactReader{r: strings.NewReader("01234"), n: 10})
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
}

// BenchmarkScanRDB measures the scanner alone (checksum included) on an RDB
// written by redis-server.
func BenchmarkScanRDB(b *testing.B) {
	srv := stacktest.Redis(b)
	redisFill(b, srv.Addr(), "", 200)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer c.Close()
	require.NoError(b, c.Save(context.Background()).Err())
	rdb, err := os.ReadFile(filepath.Join(srv.Dir(), "dump.rdb"))
	require.NoError(b, err)
	b.SetBytes(int64(len(rdb)))
	for b.Loop() {
		if _, err := scanRDB(bytes.NewReader(rdb)); err != nil {
			b.Fatal(err)
		}
	}
}

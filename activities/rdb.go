package activities

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
)

// This file reads Redis RDB files (format versions 1 to 12: Redis 2.x to
// 7.4, Valkey 7 and 8) as a stream: it walks every opcode and skips every value by its
// encoding, without decoding or decompressing anything, counts the keys of
// each database and checks the CRC-64 trailer. A backup uses it to prove that
// what it stored is one whole, uncorrupted RDB and to record its key count.
//
// The walk is the validation: a value skipped with a wrong length would throw
// the reader off the opcode stream, which shows up as an unknown type, a
// truncated file or a checksum mismatch. Values inside a listpack, ziplist or
// intset blob are not looked into; the checksum covers them.

// Errors of scanRDB, matched with errors.Is. Errors from the underlying reader
// (network, pipe) are returned wrapped and match none of these.
var (
	// errRDBTruncated: the stream ended before the RDB's EOF opcode and checksum.
	errRDBTruncated = errors.New("truncated RDB")
	// errRDBCorrupt: the bytes are not a valid RDB: bad header, impossible
	// encoding, unknown type with a checksum that does not match either, or a
	// CRC-64 mismatch.
	errRDBCorrupt = errors.New("corrupt RDB")
	// errRDBUnsupported: the RDB is intact (its checksum matches) but holds
	// something this reader cannot walk: a newer value type or opcode, a
	// pre-release module or function format.
	errRDBUnsupported = errors.New("unsupported RDB")
)

// rdbError is a scan error at a byte offset of the RDB.
type rdbError struct {
	kind error // errRDBTruncated, errRDBCorrupt or errRDBUnsupported
	off  int64
	msg  string
}

func (e *rdbError) Error() string {
	return fmt.Sprintf("%v at byte %d: %s", e.kind, e.off, e.msg)
}

func (e *rdbError) Unwrap() error { return e.kind }

// rdbSummary is what a scan found.
type rdbSummary struct {
	// Version is the RDB format version from the header (10 for Redis 7.0).
	Version int
	// RedisVersion is the AUX field redis-ver ("7.0.15"), "" if absent.
	RedisVersion string
	// Keys counts the keys of each database that holds any, by database
	// number. Keys whose TTL has passed are counted: they are in the file.
	Keys map[int]int64
	// Sizes are the RESIZEDB hints (keys per database as the saving server
	// counted them), by database number; nil if the file has none.
	Sizes map[int]int64
	// Bytes is the length of the RDB, checksum included.
	Bytes int64
	// Checksum is the CRC-64 stored in the trailer (0: saved with
	// rdbchecksum no, or format version < 5; then nothing was checked).
	Checksum uint64
}

// TotalKeys is the sum of Keys.
func (s rdbSummary) TotalKeys() int64 {
	var n int64
	for _, k := range s.Keys {
		n += k
	}
	return n
}

// DBs returns the numbers of the databases that hold keys, in order.
func (s rdbSummary) DBs() []int {
	dbs := make([]int, 0, len(s.Keys))
	for db := range s.Keys {
		dbs = append(dbs, db)
	}
	slices.Sort(dbs)
	return dbs
}

// RDB opcodes and value types (Redis src/rdb.h).
const (
	rdbOpSlotInfo    = 0xF4 // Redis 7.4: slot id, slot size, expires slot size
	rdbOpFunction2   = 0xF5 // Redis 7.0: function library code
	rdbOpFunctionPre = 0xF6 // 7.0 release candidates; Redis itself refuses it
	rdbOpModuleAux   = 0xF7
	rdbOpIdle        = 0xF8 // LRU idle time
	rdbOpFreq        = 0xF9 // LFU frequency
	rdbOpAux         = 0xFA
	rdbOpResizeDB    = 0xFB
	rdbOpExpireMS    = 0xFC
	rdbOpExpire      = 0xFD
	rdbOpSelectDB    = 0xFE
	rdbOpEOF         = 0xFF

	rdbTypeString            = 0
	rdbTypeList              = 1
	rdbTypeSet               = 2
	rdbTypeZSet              = 3
	rdbTypeHash              = 4
	rdbTypeZSet2             = 5
	rdbTypeModulePreGA       = 6
	rdbTypeModule2           = 7
	rdbTypeHashZipmap        = 9
	rdbTypeListZiplist       = 10
	rdbTypeSetIntset         = 11
	rdbTypeZSetZiplist       = 12
	rdbTypeHashZiplist       = 13
	rdbTypeListQuicklist     = 14
	rdbTypeStreamListpacks   = 15
	rdbTypeHashListpack      = 16
	rdbTypeZSetListpack      = 17
	rdbTypeListQuicklist2    = 18
	rdbTypeStreamListpacks2  = 19
	rdbTypeSetListpack       = 20
	rdbTypeStreamListpacks3  = 21
	rdbTypeHashMetadataPreGA = 22
	rdbTypeHashLPExPreGA     = 23
	rdbTypeHashMetadata      = 24
	rdbTypeHashLPEx          = 25

	// Module value opcodes (RDB_MODULE_OPCODE_*), the self-describing
	// encoding of RDB_TYPE_MODULE_2 values and module AUX data.
	rdbModuleEOF    = 0
	rdbModuleSInt   = 1
	rdbModuleUInt   = 2
	rdbModuleFloat  = 3
	rdbModuleDouble = 4
	rdbModuleString = 5

	// String encodings (RDB_ENC_*) after a length byte 11xxxxxx.
	rdbEncInt8  = 0
	rdbEncInt16 = 1
	rdbEncInt32 = 2
	rdbEncLZF   = 3

	// rdbMaxDB bounds SELECTDB: Redis' databases setting is an int, and
	// no deployment has millions; a larger number is a corrupt byte.
	rdbMaxDB = 1 << 20
	// rdbScanBufSize is the read-ahead of the scanner.
	rdbScanBufSize = 256 << 10
)

// scanRDB reads r to its end, which must hold one RDB and nothing after its
// checksum, and returns what the RDB holds. It never allocates by a length
// read from the file, so a corrupt file costs no memory, and every loop
// consumes input, so it cannot hang on one.
func scanRDB(r io.Reader) (rdbSummary, error) {
	s := rdbScanner{in: rdbReader{src: r, buf: make([]byte, rdbScanBufSize)}}
	sum, err := s.scan()
	sum.Bytes = s.in.off
	if err == nil {
		switch ferr := s.in.fill(1); {
		case ferr == nil:
			err = s.corrupt(s.in.off, "data after the RDB's checksum")
		case !errors.Is(ferr, errRDBTruncated): // the end we want
			err = ferr
		}
	}
	return sum, err
}

type rdbScanner struct {
	in  rdbReader
	sum rdbSummary
}

func (s *rdbScanner) scan() (rdbSummary, error) {
	s.sum.Keys = map[int]int64{}
	hdr, err := s.in.next(9)
	if err != nil {
		return s.sum, err
	}
	if string(hdr[:5]) != "REDIS" {
		return s.sum, s.corrupt(0, "not an RDB file: signature %q", hdr[:5])
	}
	for _, c := range hdr[5:9] {
		if c < '0' || c > '9' {
			return s.sum, s.corrupt(5, "bad format version %q", hdr[5:9])
		}
	}
	s.sum.Version, _ = strconv.Atoi(string(hdr[5:9]))
	if s.sum.Version < 1 {
		return s.sum, s.corrupt(5, "bad format version %q", hdr[5:9])
	}

	db := 0
	for {
		at := s.in.off
		op, err := s.in.byte()
		if err != nil {
			return s.sum, err
		}
		switch op {
		case rdbOpEOF:
			return s.sum, s.checksum()
		case rdbOpSelectDB:
			n, err := s.length()
			if err != nil {
				return s.sum, err
			}
			if n >= rdbMaxDB {
				return s.sum, s.corrupt(at, "SELECTDB %d", n)
			}
			db = int(n)
		case rdbOpResizeDB:
			size, err := s.length()
			if err != nil {
				return s.sum, err
			}
			if _, err := s.length(); err != nil { // expires size
				return s.sum, err
			}
			if s.sum.Sizes == nil {
				s.sum.Sizes = map[int]int64{}
			}
			s.sum.Sizes[db] = int64(min(size, 1<<62))
		case rdbOpExpire:
			err = s.in.skip(4)
		case rdbOpExpireMS:
			err = s.in.skip(8)
		case rdbOpFreq:
			err = s.in.skip(1)
		case rdbOpIdle:
			_, err = s.length()
		case rdbOpAux:
			err = s.aux()
		case rdbOpModuleAux:
			err = s.moduleAux(at)
		case rdbOpFunction2:
			err = s.skipString()
		case rdbOpSlotInfo:
			err = s.lengths(3)
		case rdbOpFunctionPre:
			return s.sum, s.unknown(at, "pre-release function format (opcode 0xF6, Redis 7.0 release candidates)")
		default:
			if op > rdbTypeHashLPEx || op == 8 || op == rdbTypeModulePreGA {
				return s.sum, s.unknown(at, rdbTypeName(op))
			}
			if err := s.skipString(); err != nil { // the key
				return s.sum, err
			}
			if err := s.value(at, op); err != nil {
				return s.sum, err
			}
			s.sum.Keys[db]++
		}
		if err != nil {
			return s.sum, err
		}
	}
}

// checksum reads the trailer after the EOF opcode and compares it with the
// CRC-64 of everything before it, as Redis does when it loads a file.
func (s *rdbScanner) checksum() error {
	if s.sum.Version < 5 {
		return nil // no checksum before RDB 5 (Redis 2.6)
	}
	want := s.in.sum()
	at := s.in.off
	p, err := s.in.next(8)
	if err != nil {
		return err
	}
	s.sum.Checksum = binary.LittleEndian.Uint64(p)
	if s.sum.Checksum != 0 && s.sum.Checksum != want {
		return s.corrupt(at, "checksum mismatch: file says %016x, content is %016x", s.sum.Checksum, want)
	}
	return nil
}

// value skips one value of type typ.
func (s *rdbScanner) value(at int64, typ byte) error {
	switch typ {
	case rdbTypeString,
		// One blob each: ziplist, intset, listpack or zipmap.
		rdbTypeHashZipmap, rdbTypeListZiplist, rdbTypeSetIntset, rdbTypeZSetZiplist,
		rdbTypeHashZiplist, rdbTypeHashListpack, rdbTypeZSetListpack, rdbTypeSetListpack,
		rdbTypeHashLPExPreGA:
		return s.skipString()
	case rdbTypeHashLPEx:
		if err := s.in.skip(8); err != nil { // minimal field expire time
			return err
		}
		return s.skipString()
	case rdbTypeList, rdbTypeSet, rdbTypeListQuicklist:
		return s.strings(1)
	case rdbTypeHash:
		return s.strings(2)
	case rdbTypeZSet:
		n, err := s.length()
		if err != nil {
			return err
		}
		for ; n > 0; n-- {
			if err := s.skipString(); err != nil {
				return err
			}
			if err := s.skipDouble(); err != nil {
				return err
			}
		}
		return nil
	case rdbTypeZSet2:
		n, err := s.length()
		if err != nil {
			return err
		}
		for ; n > 0; n-- {
			if err := s.skipString(); err != nil {
				return err
			}
			if err := s.in.skip(8); err != nil { // binary double
				return err
			}
		}
		return nil
	case rdbTypeListQuicklist2:
		n, err := s.length()
		if err != nil {
			return err
		}
		for ; n > 0; n-- {
			cat := s.in.off
			container, err := s.length()
			if err != nil {
				return err
			}
			if container != 1 && container != 2 { // PLAIN or PACKED
				return s.corrupt(cat, "quicklist node container %d", container)
			}
			if err := s.skipString(); err != nil {
				return err
			}
		}
		return nil
	case rdbTypeHashMetadata, rdbTypeHashMetadataPreGA:
		if typ == rdbTypeHashMetadata {
			if err := s.in.skip(8); err != nil { // minimal field expire time
				return err
			}
		}
		n, err := s.length()
		if err != nil {
			return err
		}
		for ; n > 0; n-- {
			if _, err := s.length(); err != nil { // field TTL
				return err
			}
			if err := s.skipStrings(2); err != nil {
				return err
			}
		}
		return nil
	case rdbTypeStreamListpacks, rdbTypeStreamListpacks2, rdbTypeStreamListpacks3:
		return s.stream(typ)
	case rdbTypeModule2:
		if _, err := s.length(); err != nil { // module id
			return err
		}
		return s.moduleValue()
	default:
		return s.unknown(at, rdbTypeName(typ))
	}
}

func rdbTypeName(typ byte) string {
	switch {
	case typ == rdbTypeModulePreGA:
		return "pre-release module value (type 6, Redis 4.0 release candidates)"
	case typ >= 0xF0:
		return fmt.Sprintf("opcode 0x%02X", typ)
	}
	return fmt.Sprintf("value type %d", typ)
}

// stream skips a stream value (RDB_TYPE_STREAM_LISTPACKS, _2, _3).
func (s *rdbScanner) stream(typ byte) error {
	nodes, err := s.length()
	if err != nil {
		return err
	}
	for ; nodes > 0; nodes-- {
		at := s.in.off
		n, enc, err := s.rawLength()
		if err != nil {
			return err
		}
		if enc || n != 16 { // master entry ID, 128 bits
			return s.corrupt(at, "stream node key is not a 16-byte ID")
		}
		if err := s.in.skip(16); err != nil {
			return err
		}
		if err := s.skipString(); err != nil { // listpack
			return err
		}
	}
	// length, last ID (ms, seq); from v2: first ID, max deleted ID, entries added.
	meta := 3
	if typ >= rdbTypeStreamListpacks2 {
		meta += 5
	}
	if err := s.lengths(meta); err != nil {
		return err
	}
	groups, err := s.length()
	if err != nil {
		return err
	}
	for ; groups > 0; groups-- {
		if err := s.skipString(); err != nil { // name
			return err
		}
		meta := 2 // last delivered ID
		if typ >= rdbTypeStreamListpacks2 {
			meta++ // entries read
		}
		if err := s.lengths(meta); err != nil {
			return err
		}
		pel, err := s.length()
		if err != nil {
			return err
		}
		for ; pel > 0; pel-- {
			// entry ID, delivery time (ms), then the delivery count.
			if err := s.in.skip(16 + 8); err != nil {
				return err
			}
			if _, err := s.length(); err != nil {
				return err
			}
		}
		consumers, err := s.length()
		if err != nil {
			return err
		}
		for ; consumers > 0; consumers-- {
			if err := s.skipString(); err != nil { // name
				return err
			}
			times := 8 // seen time
			if typ >= rdbTypeStreamListpacks3 {
				times += 8 // active time
			}
			if err := s.in.skip(uint64(times)); err != nil {
				return err
			}
			pel, err := s.length()
			if err != nil {
				return err
			}
			for ; pel > 0; pel-- {
				if err := s.in.skip(16); err != nil { // entry ID
					return err
				}
			}
		}
	}
	return nil
}

// moduleAux skips module AUX data: module id, when-opcode (UINT), when, then
// a module value in the self-describing v2 encoding.
func (s *rdbScanner) moduleAux(at int64) error {
	if _, err := s.length(); err != nil { // module id
		return err
	}
	op, err := s.length()
	if err != nil {
		return err
	}
	if op != rdbModuleUInt {
		return s.corrupt(at, "module aux when-opcode %d", op)
	}
	if _, err := s.length(); err != nil { // when
		return err
	}
	return s.moduleValue()
}

// moduleValue skips a module value saved in the v2 encoding, where every
// field carries its opcode, up to and including the EOF opcode (what
// redis-check-rdb does for modules it does not have).
func (s *rdbScanner) moduleValue() error {
	for {
		at := s.in.off
		op, err := s.length()
		if err != nil {
			return err
		}
		switch op {
		case rdbModuleEOF:
			return nil
		case rdbModuleSInt, rdbModuleUInt:
			_, err = s.length()
		case rdbModuleFloat:
			err = s.in.skip(4)
		case rdbModuleDouble:
			err = s.in.skip(8)
		case rdbModuleString:
			err = s.skipString()
		default:
			return s.corrupt(at, "module value opcode %d", op)
		}
		if err != nil {
			return err
		}
	}
}

// aux reads an AUX field and keeps the one we report (redis-ver).
func (s *rdbScanner) aux() error {
	key, err := s.readString(32)
	if err != nil {
		return err
	}
	if key != "redis-ver" {
		return s.skipString()
	}
	v, err := s.readString(64)
	if err != nil {
		return err
	}
	s.sum.RedisVersion = v
	return nil
}

// strings skips a length followed by per×length strings.
func (s *rdbScanner) strings(per uint64) error {
	n, err := s.length()
	if err != nil {
		return err
	}
	for ; n > 0; n-- {
		if err := s.skipStrings(per); err != nil {
			return err
		}
	}
	return nil
}

func (s *rdbScanner) skipStrings(n uint64) error {
	for ; n > 0; n-- {
		if err := s.skipString(); err != nil {
			return err
		}
	}
	return nil
}

// lengths skips n lengths.
func (s *rdbScanner) lengths(n int) error {
	for ; n > 0; n-- {
		if _, err := s.length(); err != nil {
			return err
		}
	}
	return nil
}

// skipDouble skips a double in the old string form of RDB_TYPE_ZSET: a
// length byte, 253/254/255 for NaN/+inf/-inf, else that many ASCII bytes.
func (s *rdbScanner) skipDouble() error {
	n, err := s.in.byte()
	if err != nil {
		return err
	}
	if n >= 253 {
		return nil
	}
	return s.in.skip(uint64(n))
}

// rawLength reads a length (rdbLoadLen): 00|6 bits, 01|14 bits, 0x80 + 32
// bits, 0x81 + 64 bits (big-endian); 11|6 bits is a special string encoding,
// returned with enc set.
func (s *rdbScanner) rawLength() (n uint64, enc bool, err error) {
	at := s.in.off
	b, err := s.in.byte()
	if err != nil {
		return 0, false, err
	}
	switch b >> 6 {
	case 0:
		return uint64(b & 0x3f), false, nil
	case 1:
		b2, err := s.in.byte()
		if err != nil {
			return 0, false, err
		}
		return uint64(b&0x3f)<<8 | uint64(b2), false, nil
	case 3:
		return uint64(b & 0x3f), true, nil
	}
	switch b {
	case 0x80:
		p, err := s.in.next(4)
		if err != nil {
			return 0, false, err
		}
		return uint64(binary.BigEndian.Uint32(p)), false, nil
	case 0x81:
		p, err := s.in.next(8)
		if err != nil {
			return 0, false, err
		}
		return binary.BigEndian.Uint64(p), false, nil
	}
	return 0, false, s.corrupt(at, "length prefix 0x%02x", b)
}

// length reads a plain length; a string encoding in its place is corrupt.
func (s *rdbScanner) length() (uint64, error) {
	at := s.in.off
	n, enc, err := s.rawLength()
	if err == nil && enc {
		err = s.corrupt(at, "string encoding where a length belongs")
	}
	return n, err
}

// skipString skips a string in any of its encodings: raw, integer, LZF.
func (s *rdbScanner) skipString() error {
	at := s.in.off
	n, enc, err := s.rawLength()
	switch {
	case err != nil:
		return err
	case !enc:
		return s.in.skip(n)
	case n == rdbEncInt8:
		return s.in.skip(1)
	case n == rdbEncInt16:
		return s.in.skip(2)
	case n == rdbEncInt32:
		return s.in.skip(4)
	case n == rdbEncLZF:
		clen, err := s.lzfLengths(at)
		if err != nil {
			return err
		}
		return s.in.skip(clen)
	}
	return s.corrupt(at, "string encoding %d", n)
}

// lzfLengths reads the compressed and uncompressed lengths of an LZF string
// and returns the compressed one.
func (s *rdbScanner) lzfLengths(at int64) (uint64, error) {
	clen, err := s.length()
	if err != nil {
		return 0, err
	}
	ulen, err := s.length()
	if err != nil {
		return 0, err
	}
	if clen == 0 || ulen == 0 {
		return 0, s.corrupt(at, "LZF string of %d bytes compressed to %d", ulen, clen)
	}
	return clen, nil
}

// readString reads a string: raw ones up to max bytes and integer-encoded
// ones are returned; longer or LZF-compressed ones are skipped and read as "".
func (s *rdbScanner) readString(max int) (string, error) {
	at := s.in.off
	n, enc, err := s.rawLength()
	if err != nil {
		return "", err
	}
	if !enc {
		if n > uint64(max) {
			return "", s.in.skip(n)
		}
		p, err := s.in.next(int(n))
		return string(p), err
	}
	switch n {
	case rdbEncInt8:
		p, err := s.in.next(1)
		if err != nil {
			return "", err
		}
		return strconv.Itoa(int(int8(p[0]))), nil
	case rdbEncInt16:
		p, err := s.in.next(2)
		if err != nil {
			return "", err
		}
		return strconv.Itoa(int(int16(binary.LittleEndian.Uint16(p)))), nil
	case rdbEncInt32:
		p, err := s.in.next(4)
		if err != nil {
			return "", err
		}
		return strconv.Itoa(int(int32(binary.LittleEndian.Uint32(p)))), nil
	case rdbEncLZF:
		clen, err := s.lzfLengths(at)
		if err != nil {
			return "", err
		}
		return "", s.in.skip(clen)
	}
	return "", s.corrupt(at, "string encoding %d", n)
}

func (s *rdbScanner) corrupt(at int64, format string, args ...any) error {
	return &rdbError{kind: errRDBCorrupt, off: at, msg: fmt.Sprintf(format, args...)}
}

// unknown reports something the scanner cannot walk past. It reads the rest
// of the stream to tell the two possible causes apart: if the trailing
// checksum matches, the file is intact and holds something newer than this
// reader (errRDBUnsupported); otherwise a corrupt byte made up the type
// (errRDBCorrupt).
func (s *rdbScanner) unknown(at int64, what string) error {
	if s.sum.Version < 5 {
		return &rdbError{kind: errRDBUnsupported, off: at, msg: what + " (no checksum to tell it from corruption)"}
	}
	ok, stored, err := s.in.drainVerify()
	if err != nil {
		return err
	}
	if ok && stored != 0 {
		return &rdbError{kind: errRDBUnsupported, off: at, msg: fmt.Sprintf(
			"%s in RDB format version %d (produced by redis %q); the file's checksum is intact, so drflow's RDB reader needs updating",
			what, s.sum.Version, s.sum.RedisVersion)}
	}
	return &rdbError{kind: errRDBCorrupt, off: at, msg: what + ", and the file's checksum does not match"}
}

// rdbReader is a buffered reader that keeps the Redis CRC-64 of the bytes
// consumed so far, so the checksum covers exactly what the scanner walked.
type rdbReader struct {
	src  io.Reader
	buf  []byte
	r, w int    // unread bytes: buf[r:w]
	c    int    // buf[c:r] is consumed but not yet in crc
	off  int64  // bytes consumed
	crc  uint64 // CRC-64/Jones of the consumed bytes up to buf[c]
	err  error  // sticky error of src
}

// sum returns the CRC-64 of all bytes consumed so far. The checksum is
// brought up to date lazily, a buffer at a time: per-field updates would
// cost more than the walk itself.
func (b *rdbReader) sum() uint64 {
	b.crc = crc64Jones(b.crc, b.buf[b.c:b.r])
	b.c = b.r
	return b.crc
}

// fill buffers at least n bytes (n <= len(buf)). At the end of src it
// returns an errRDBTruncated error; other errors of src come back wrapped.
func (b *rdbReader) fill(n int) error {
	if b.w-b.r >= n {
		return nil
	}
	if b.r > 0 {
		b.sum()
		b.w = copy(b.buf, b.buf[b.r:b.w])
		b.r, b.c = 0, 0
	}
	for empty := 0; b.w < n; {
		if b.err != nil {
			if b.err == io.EOF {
				return &rdbError{kind: errRDBTruncated, off: b.off + int64(b.w-b.r), msg: "unexpected end of data"}
			}
			return fmt.Errorf("read RDB at byte %d: %w", b.off+int64(b.w-b.r), b.err)
		}
		m, err := b.src.Read(b.buf[b.w:])
		b.w += m
		if err != nil {
			b.err = err
		}
		if m == 0 && err == nil {
			if empty++; empty > 100 {
				b.err = io.ErrNoProgress
			}
		}
	}
	return nil
}

func (b *rdbReader) consume(n int) {
	b.r += n
	b.off += int64(n)
}

// next consumes n bytes (n <= len(buf)) and returns them; the slice is valid
// until the next call.
func (b *rdbReader) next(n int) ([]byte, error) {
	if err := b.fill(n); err != nil {
		return nil, err
	}
	p := b.buf[b.r : b.r+n]
	b.consume(n)
	return p, nil
}

func (b *rdbReader) byte() (byte, error) {
	if b.r < b.w {
		c := b.buf[b.r]
		b.consume(1)
		return c, nil
	}
	p, err := b.next(1)
	if err != nil {
		return 0, err
	}
	return p[0], nil
}

// skip consumes n bytes of any length.
func (b *rdbReader) skip(n uint64) error {
	for n > 0 {
		if b.r == b.w {
			if err := b.fill(1); err != nil {
				return err
			}
		}
		k := b.w - b.r
		if uint64(k) > n {
			k = int(n)
		}
		b.consume(k)
		n -= uint64(k)
	}
	return nil
}

// drainVerify consumes the rest of src and reports whether its last 8 bytes
// are the CRC-64 of everything before them, and what they hold.
func (b *rdbReader) drainVerify() (ok bool, stored uint64, err error) {
	for {
		err := b.fill(9)
		if k := b.w - b.r - 8; k > 0 {
			b.consume(k) // keep the last 8 bytes: they may be the checksum
		}
		if errors.Is(err, errRDBTruncated) {
			break
		}
		if err != nil {
			return false, 0, err
		}
	}
	if b.w-b.r < 8 {
		return false, 0, nil
	}
	stored = binary.LittleEndian.Uint64(b.buf[b.r:])
	want := b.sum()
	b.consume(8)
	return stored == want, stored, nil
}

// crc64Jones is Redis' CRC-64 (Jones polynomial, reflected, initial value 0,
// no final xor): crc64Jones(0, "123456789") == 0xe9c6d914c4b8d9ca. It is
// computed eight bytes at a time (slicing-by-8).
func crc64Jones(crc uint64, p []byte) uint64 {
	t := &crc64JonesTable
	for len(p) >= 8 {
		crc ^= binary.LittleEndian.Uint64(p)
		crc = t[7][crc&0xff] ^ t[6][crc>>8&0xff] ^ t[5][crc>>16&0xff] ^ t[4][crc>>24&0xff] ^
			t[3][crc>>32&0xff] ^ t[2][crc>>40&0xff] ^ t[1][crc>>48&0xff] ^ t[0][crc>>56]
		p = p[8:]
	}
	for _, v := range p {
		crc = t[0][byte(crc)^v] ^ crc>>8
	}
	return crc
}

var crc64JonesTable = func() (t [8][256]uint64) {
	const poly = 0x95ac9329ac4bc9b5 // 0xad93d23594c935a9 reflected
	for i := range 256 {
		crc := uint64(i)
		for range 8 {
			if crc&1 == 1 {
				crc = crc>>1 ^ poly
			} else {
				crc >>= 1
			}
		}
		t[0][i] = crc
	}
	for i := range 256 {
		crc := t[0][i]
		for j := 1; j < 8; j++ {
			crc = t[0][crc&0xff] ^ crc>>8
			t[j][i] = crc
		}
	}
	return t
}()

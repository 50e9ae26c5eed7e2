package activities

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"syscall"
	"testing"

	"filippo.io/age"

	"github.com/kohakku/drflow/internal/config"
)

// BenchmarkCompressAndHashAge measures the CPU cost of age alone: the same
// in-memory data through compressAndHash (zstd at the default level, SHA-256)
// into io.Discard, without and with encryption to one X25519 recipient, in
// one run. No pg_dump, no network: the difference between the two
// sub-benchmarks is what encryption adds to a backup stream. The full picture
// (pg_dump and the upload included) is BenchmarkDumpVsPgDumpFc.
func BenchmarkCompressAndHashAge(b *testing.B) {
	data := benchRows(64 << 20)
	id, err := age.GenerateX25519Identity()
	if err != nil {
		b.Fatal(err)
	}
	enc, err := NewAgeKeys(config.Encryption{AgeRecipients: []string{id.Recipient().String()}})
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		keys *AgeKeys
	}{{"zstd", nil}, {"zstd+age", enc}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			var out int64
			cpu0 := ageBenchCPU()
			for b.Loop() {
				c, err := compressAndHash(io.Discard, bytes.NewReader(data), ZstdOptions{}, bc.keys, nil)
				if err != nil {
					b.Fatal(err)
				}
				out = c.Size
			}
			// CPU time is steadier than wall time on a shared machine.
			b.ReportMetric(float64(ageBenchCPU()-cpu0)/float64(b.N)/1e6, "cpu-ms/op")
			b.ReportMetric(float64(out)/float64(len(data)), "stored/raw")
		})
	}
	// age alone, on bytes as incompressible as zstd's output.
	b.Run("age-only", func(b *testing.B) {
		noise := make([]byte, 16<<20)
		rr := rand.New(rand.NewPCG(3, 4))
		for i := range noise {
			noise[i] = byte(rr.Uint32())
		}
		b.SetBytes(int64(len(noise)))
		cpu0 := ageBenchCPU()
		for b.Loop() {
			w, finish, err := enc.seal(io.Discard)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := w.Write(noise); err != nil {
				b.Fatal(err)
			}
			if err := finish(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(ageBenchCPU()-cpu0)/float64(b.N)/1e6, "cpu-ms/op")
	})
}

// ageBenchCPU is the CPU time of this process so far, user and system, in ns.
func ageBenchCPU() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// benchRows is n bytes of rows like a dump's: English-like words (Zipf) in
// JSON, ids, timestamps and hex digests; it compresses about 4:1 with zstd.
func benchRows(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	syl := []string{"ka", "ri", "to", "ne", "mo", "sa", "lu", "vi", "de", "po", "an", "er", "in", "on", "st", "tr"}
	words := make([]string, 4000)
	for i := range words {
		w := ""
		for range 2 + r.IntN(3) {
			w += syl[r.IntN(len(syl))]
		}
		words[i] = w
	}
	z := rand.NewZipf(r, 1.07, 2, uint64(len(words)-1))
	var b bytes.Buffer
	for id := 1; b.Len() < n; id++ {
		fmt.Fprintf(&b, "%d\t{\"prompt\": \"", id)
		for range 10 + r.IntN(60) {
			b.WriteString(words[z.Uint64()])
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "\", \"attempt\": %d}\t2026-11-%02dT%02d:%02d:%02dZ\t%016x%016x\n", r.IntN(4), 1+r.IntN(28), r.IntN(24), r.IntN(60), r.IntN(60), r.Uint64(), r.Uint64())
	}
	return b.Bytes()[:n]
}

package activities

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
	"go.temporal.io/sdk/temporal"

	"github.com/kohakku/drflow/internal/config"
)

// Client-side encryption of the stored artifacts with age (filippo.io/age).
//
// Format of an encrypted artifact: the zstd frame of the source, encrypted as
// one age file (binary, not armored) to every configured recipient. age's
// payload is a STREAM of 64 KiB ChaCha20-Poly1305 chunks, so a truncated,
// reordered or altered file fails to decrypt instead of yielding other bytes;
// the file key is wrapped per recipient (X25519, or the post-quantum
// ML-KEM-768+X25519 hybrid). Artifact.SHA256 and Size are of the encrypted
// bytes, as stored, so CheckArtifact and a download check need no key.
//
// The manifest records Encryption "age" and RecipientFingerprints: for each
// recipient "sha256:" and the hex SHA-256 of its public key's text. That
// names the keys without holding any, and tells a verifier before it
// downloads anything whether one of its identities can decrypt the set.

// EncryptionAge is recorded in Artifact.Encryption for an artifact encrypted
// with age.
const EncryptionAge = "age"

// Error types of the non-retryable errors of an encrypted artifact this
// worker cannot decrypt. They are about the worker's keys, not the set: the
// set is not marked failed, and another worker (or identity file) can read it.
const (
	// ErrAgeIdentityMissing: the artifact is encrypted and the worker has no
	// identity (DRFLOW_AGE_IDENTITY_FILE is not set).
	ErrAgeIdentityMissing = "AgeIdentityMissing"
	// ErrAgeIdentityMismatch: none of the worker's identities is one of the
	// recipients the artifact was encrypted to.
	ErrAgeIdentityMismatch = "AgeIdentityMismatch"
)

// AgeKeys are the age recipients the worker encrypts new artifacts to and
// the identities it decrypts stored ones with, built once in the worker
// (NewAgeKeys). A nil *AgeKeys encrypts nothing and decrypts nothing; every
// method works on it.
type AgeKeys struct {
	recipients   []age.Recipient
	fingerprints []string // of recipients, in their order
	identities   []age.Identity
	// idFingerprints are the fingerprints of the identities' recipients.
	idFingerprints []string
	// identitySource names where the identities come from, for messages:
	// the variable and the file's path, never its content.
	identitySource string
}

// NewAgeKeys returns the keys of cfg: nil when it has neither recipients nor
// identities. The configuration has checked them already; an error here
// names the variable and never quotes a secret key.
func NewAgeKeys(cfg config.Encryption) (*AgeKeys, error) {
	recipients, identities := cfg.Recipients(), cfg.RevealIdentities()
	if len(recipients) == 0 && len(identities) == 0 {
		return nil, nil
	}
	k := &AgeKeys{identitySource: config.AgeIdentityFileEnv}
	if cfg.AgeIdentityFile != "" {
		k.identitySource += " (" + cfg.AgeIdentityFile + ")"
	}
	for i, s := range recipients {
		rs, err := age.ParseRecipients(strings.NewReader(s))
		if err != nil {
			return nil, fmt.Errorf("age recipient %d (%s, %s): %v", i+1, config.AgeRecipientsEnv, config.AgeRecipientsFileEnv, err)
		}
		k.recipients = append(k.recipients, rs[0])
		k.fingerprints = append(k.fingerprints, AgeFingerprint(recipientString(rs[0], s)))
	}
	if len(k.recipients) > 0 {
		// Mixed kinds are refused by age at the first encryption: refuse now.
		w, err := age.Encrypt(io.Discard, k.recipients...)
		if err != nil {
			return nil, fmt.Errorf("age recipients (%s, %s): %v", config.AgeRecipientsEnv, config.AgeRecipientsFileEnv, err)
		}
		_ = w.Close()
	}
	for i, s := range identities {
		ids, err := age.ParseIdentities(strings.NewReader(s))
		if err != nil {
			// age's message may quote part of the key: not repeated.
			return nil, fmt.Errorf("%s: identity %d is not a valid age identity", k.identitySource, i+1)
		}
		k.identities = append(k.identities, ids[0])
		if fp := identityFingerprint(ids[0]); fp != "" {
			k.idFingerprints = append(k.idFingerprints, fp)
		}
	}
	return k, nil
}

// AgeFingerprint is what the manifest records of a recipient: "sha256:" and
// the hex SHA-256 of the public key's text (`printf %s age1… | sha256sum`).
func AgeFingerprint(recipient string) string {
	sum := sha256.Sum256([]byte(recipient))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func recipientString(r age.Recipient, fallback string) string {
	if s, ok := r.(fmt.Stringer); ok {
		return s.String()
	}
	return fallback
}

// identityFingerprint is the fingerprint of id's recipient, "" for an
// identity type that does not tell it.
func identityFingerprint(id age.Identity) string {
	switch id := id.(type) {
	case *age.X25519Identity:
		return AgeFingerprint(id.Recipient().String())
	case *age.HybridIdentity:
		return AgeFingerprint(id.Recipient().String())
	}
	return ""
}

// Encrypts reports whether new artifacts are encrypted.
func (k *AgeKeys) Encrypts() bool { return k != nil && len(k.recipients) > 0 }

// Fingerprints returns the fingerprints of the recipients new artifacts are
// encrypted to; nil when they are not encrypted.
func (k *AgeKeys) Fingerprints() []string {
	if !k.Encrypts() {
		return nil
	}
	return slices.Clone(k.fingerprints)
}

// stamp records in a how the artifact written with k is encrypted.
func (k *AgeKeys) stamp(a *Artifact) {
	a.Encryption, a.RecipientFingerprints = EncryptionNone, nil
	if k.Encrypts() {
		a.Encryption, a.RecipientFingerprints = EncryptionAge, k.Fingerprints()
	}
}

// seal returns the writer a compressor writes the artifact into: dst itself
// when k encrypts nothing, else an age file to k's recipients whose header
// is written to dst at once.
//
// contract: finish ends the age file (its last chunk, which authenticates the
// end) and is called only once the compressor has flushed successfully; on a
// failed stream it is not called, so what reached dst cannot be decrypted to
// its end. dst is never closed.
func (k *AgeKeys) seal(dst io.Writer) (w io.Writer, finish func() error, err error) {
	if !k.Encrypts() {
		return dst, func() error { return nil }, nil
	}
	aw, err := age.Encrypt(dst, k.recipients...)
	if err != nil {
		return nil, nil, fmt.Errorf("encrypt: %w", err)
	}
	return aw, func() error {
		if err := aw.Close(); err != nil {
			return fmt.Errorf("encrypt: %w", err)
		}
		return nil
	}, nil
}

// checkReadable tells, without reading anything, whether the worker can
// decode a stored artifact as far as its keys go: an encrypted artifact
// needs an identity, and one of the recipients the manifest names. Its
// errors are non-retryable ErrAgeIdentityMissing and ErrAgeIdentityMismatch
// application errors; every reader calls it (through openArtifact, and
// before a download, so a wrong key fails before the first byte).
func (k *AgeKeys) checkReadable(a Artifact) error {
	_, err := k.readable(a)
	return err
}

// readable is checkReadable; matched tells that one of k's identities is
// known, by its fingerprint, to be one of a's recipients.
func (k *AgeKeys) readable(a Artifact) (matched bool, err error) {
	if a.Encryption != EncryptionAge {
		return false, nil
	}
	if k == nil || len(k.identities) == 0 {
		return false, NonRetryable(ErrAgeIdentityMissing, fmt.Errorf(
			"%s is encrypted to age recipients %s; this worker has no age identity to decrypt it: set %s to a file holding the secret key of one of those recipients (as age-keygen writes it), on the workers that restore and verify",
			artifactWhat(a), fingerprintList(a.RecipientFingerprints), config.AgeIdentityFileEnv))
	}
	for _, fp := range k.idFingerprints {
		if slices.Contains(a.RecipientFingerprints, fp) {
			return true, nil
		}
	}
	if len(a.RecipientFingerprints) == 0 || len(k.idFingerprints) < len(k.identities) {
		return false, nil // nothing to compare: age itself will tell
	}
	return false, k.mismatch(a)
}

// matching returns the fingerprint of k's first identity among a's recipients.
func (k *AgeKeys) matching(a Artifact) string {
	for _, fp := range k.idFingerprints {
		if slices.Contains(a.RecipientFingerprints, fp) {
			return fp
		}
	}
	return ""
}

func (k *AgeKeys) mismatch(a Artifact) error {
	return NonRetryable(ErrAgeIdentityMismatch, fmt.Errorf(
		"%s is encrypted to age recipients %s; none of the identities in %s matches (they are for %s): give this worker the identity of one of the set's recipients",
		artifactWhat(a), fingerprintList(a.RecipientFingerprints), k.identitySource, fingerprintList(k.idFingerprints)))
}

// artifactWhat names an artifact by its set, when its key tells it, and key.
func artifactWhat(a Artifact) string {
	if rest, ok := strings.CutPrefix(a.Key, SetsPrefix); ok {
		if id, _, ok := strings.Cut(rest, "/"); ok {
			return fmt.Sprintf("set %s (%s)", id, a.Key)
		}
	}
	return a.Key
}

func fingerprintList(fps []string) string {
	if len(fps) == 0 {
		return "(none recorded in the manifest)"
	}
	return strings.Join(fps, ", ")
}

// AgeKeyError returns the ErrAgeIdentityMissing or ErrAgeIdentityMismatch
// application error in err's chain, nil when there is none. Activities return
// it as it is: wrapping would hide its type from Temporal.
func AgeKeyError(err error) error {
	var app *temporal.ApplicationError
	if errors.As(err, &app) && (app.Type() == ErrAgeIdentityMissing || app.Type() == ErrAgeIdentityMismatch) {
		return app
	}
	return nil
}

// openArtifact is the one way to read a stored artifact: it wraps r, the
// artifact's stored bytes, in what a's manifest entry says they went through
// — age decryption with k's identities when a.Encryption is age, then zstd
// when a.Compression is zstd (or "", as early listings were) — and returns
// the plaintext. zopts tune the zstd decoder. release frees the decoder and
// never closes r.
//
// Errors: checkReadable's key errors (also when age finds that no identity
// matches the file's header); an encryption or compression it does not know
// (bad input); an age header that does not parse (the data). Errors reading
// the returned reader are the data's — a truncated, tampered or corrupt file
// never decrypts to other bytes — or r's own, which pass through unchanged.
// The age header is read from r here, in the caller's goroutine.
func (k *AgeKeys) openArtifact(r io.Reader, a Artifact, zopts ...zstd.DOption) (plain io.Reader, release func(), err error) {
	nop := func() {}
	matched, err := k.readable(a)
	if err != nil {
		return nil, nop, err
	}
	switch a.Encryption {
	case "", EncryptionNone:
	case EncryptionAge:
		src := &ageSource{r: r}
		dr, err := age.Decrypt(src, k.identities...)
		var nomatch *age.NoIdentityMatchError
		switch {
		case errors.As(err, &nomatch) && matched:
			// One of the identities is a recipient the manifest names, yet
			// it unwraps no stanza: the stored header is damaged.
			return nil, nop, &ageDataError{fmt.Errorf("the header does not open with the identity of recipient %s, which the manifest names: %w", k.matching(a), err)}
		case errors.As(err, &nomatch):
			return nil, nop, k.mismatch(a)
		case err != nil && src.caused(err):
			return nil, nop, err
		case err != nil:
			return nil, nop, &ageDataError{err}
		}
		r = &ageReader{r: dr, src: src}
	default:
		return nil, nop, fmt.Errorf("encryption %q is not %s or %s", a.Encryption, EncryptionNone, EncryptionAge)
	}
	switch a.Compression {
	case CompressionZstd, "":
		dec, err := zstd.NewReader(r, zopts...)
		if err != nil {
			return nil, nop, fmt.Errorf("zstd: %w", err)
		}
		return dec, dec.Close, nil
	case CompressionNone:
		return r, nop, nil
	}
	return nil, nop, fmt.Errorf("compression %q is not %s or %s", a.Compression, CompressionZstd, CompressionNone)
}

// ageSource remembers the last error of the stored bytes' reader, so that
// ageReader can tell the source's errors from age's verdicts on the data.
type ageSource struct {
	r   io.Reader
	err error
}

func (s *ageSource) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// caused reports whether err is, or wraps, the source's error.
func (s *ageSource) caused(err error) bool { return s.err != nil && errors.Is(err, s.err) }

// ageReader passes the source's errors through unchanged (age returns them
// as they are, or wrapped) and marks every other error as the data's: a
// chunk that fails authentication, a file cut short (io.ErrUnexpectedEOF),
// trailing bytes.
type ageReader struct {
	r   io.Reader
	src *ageSource
}

func (a *ageReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if err != nil && err != io.EOF && !a.src.caused(err) {
		err = &ageDataError{err}
	}
	return n, err
}

// isAgeDataError reports whether err says the stored bytes do not decrypt.
func isAgeDataError(err error) bool {
	var ae *ageDataError
	return errors.As(err, &ae)
}

// ageDataError is age's verdict on the stored bytes: they do not decrypt.
type ageDataError struct{ err error }

func (e *ageDataError) Error() string { return "decrypt (age): " + e.err.Error() }
func (e *ageDataError) Unwrap() error { return e.err }

package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"filippo.io/age"
)

// The environment variables of the client-side encryption of backup artifacts.
const (
	AgeRecipientsEnv     = "DRFLOW_AGE_RECIPIENTS"
	AgeRecipientsFileEnv = "DRFLOW_AGE_RECIPIENTS_FILE"
	AgeIdentityFileEnv   = "DRFLOW_AGE_IDENTITY_FILE"
)

// exampleAgeRecipient is a valid age public key, shown in error messages. Its
// secret key was thrown away.
const exampleAgeRecipient = "age17rfxptexkxqgxve24y846dw5u2ns8qfya26mp5hlwg8sh6axj5wq3x3kme"

// maxAgeKeyFile bounds what is read of a recipients or identity file (age's
// own limit is 16 MiB; a real file is a few hundred bytes per key).
const maxAgeKeyFile = 1 << 20

// Encryption is the client-side encryption of backup artifacts with age
// (filippo.io/age). Backups are encrypted when any recipient is configured;
// restores and verifications decrypt with the identities. The recipients
// are public keys and may be printed; the identities are secret keys, held
// as Secret.
type Encryption struct {
	// AgeRecipients are the age public keys (age1…) of DRFLOW_AGE_RECIPIENTS,
	// in the order given, in their canonical form.
	AgeRecipients []string `json:"ageRecipients"`
	// AgeRecipientsFile is the recipients file (DRFLOW_AGE_RECIPIENTS_FILE),
	// in age's format: one public key per line, # comments and blank lines
	// ignored. It is read when the configuration is loaded.
	AgeRecipientsFile string `json:"ageRecipientsFile"`
	// AgeFileRecipients are the public keys read from AgeRecipientsFile.
	AgeFileRecipients []string `json:"ageFileRecipients"`
	// AgeIdentityFile is the identity file (DRFLOW_AGE_IDENTITY_FILE), as
	// written by age-keygen: the secret keys restores and verifications
	// decrypt with. It is read when the configuration is loaded.
	AgeIdentityFile string `json:"ageIdentityFile"`
	// AgeIdentities are the secret keys (AGE-SECRET-KEY-1…) read from
	// AgeIdentityFile: credentials, never to be logged.
	AgeIdentities []Secret `json:"ageIdentities"`
}

// Recipients returns every configured recipient, those of
// DRFLOW_AGE_RECIPIENTS first, then those of the recipients file, without
// repeats. Empty means backups are written unencrypted.
func (e Encryption) Recipients() []string {
	var out []string
	for _, r := range slices.Concat(e.AgeRecipients, e.AgeFileRecipients) {
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out
}

// RevealIdentities returns the secret keys of the identity file: credentials,
// to hand to age and never to log.
func (e Encryption) RevealIdentities() []string {
	out := make([]string, len(e.AgeIdentities))
	for i, s := range e.AgeIdentities {
		out[i] = s.Reveal()
	}
	return out
}

// ageRecipients stores DRFLOW_AGE_RECIPIENTS: age public keys separated by
// commas and/or white space. A bad entry is named by its position; a secret
// key given by mistake is never echoed.
func ageRecipients(c *Config, _ *variable, raw string) error {
	entries := strings.FieldsFunc(raw, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
	if len(entries) == 0 {
		return fmt.Errorf("no recipient in the value (want e.g. %s)", exampleAgeRecipient)
	}
	var out []string
	for i, e := range entries {
		canon, err := parseAgeRecipient(e)
		if err != nil {
			return fmt.Errorf("entry %d: %w", i+1, err)
		}
		if slices.Contains(out, canon) {
			return fmt.Errorf("entry %d: %s is listed twice (want e.g. %s)", i+1, canon, exampleAgeRecipient)
		}
		out = append(out, canon)
	}
	c.Encryption.AgeRecipients = out
	return nil
}

// parseAgeRecipient parses one public key and returns its canonical form.
func parseAgeRecipient(s string) (string, error) {
	if looksLikeAgeIdentity(s) {
		return "", errors.New("is an age secret key (identity), not a recipient; the value is not shown: give its public key instead (age-keygen -y FILE prints it), and keep the secret key only in DRFLOW_AGE_IDENTITY_FILE on the workers that restore")
	}
	var (
		r   age.Recipient
		err error
	)
	switch {
	case strings.HasPrefix(s, "age1pq1"):
		r, err = age.ParseHybridRecipient(s)
	case strings.HasPrefix(s, "age1"):
		r, err = age.ParseX25519Recipient(s)
	default:
		if utf8.RuneCountInString(s) > 80 {
			s = string([]rune(s)[:80]) + "…"
		}
		return "", fmt.Errorf("%q is not an age recipient (want an age public key such as %s, as age-keygen prints; SSH keys and plugins are not supported)", s, exampleAgeRecipient)
	}
	if err != nil {
		// age's message quotes the key: public, so it may be shown.
		return "", fmt.Errorf("%v (want an age public key such as %s, as age-keygen prints)", err, exampleAgeRecipient)
	}
	return r.(fmt.Stringer).String(), nil
}

// looksLikeAgeIdentity reports whether s is an age secret key, in any case.
func looksLikeAgeIdentity(s string) bool {
	return strings.HasPrefix(strings.ToUpper(strings.TrimSpace(s)), "AGE-SECRET-KEY-")
}

// ageRecipientsFile stores DRFLOW_AGE_RECIPIENTS_FILE and the recipients it
// holds, parsed as age.ParseRecipients does; a bad line is named by number.
func ageRecipientsFile(c *Config, _ *variable, raw string) error {
	if strings.ContainsRune(raw, 0) {
		return errors.New("contains a NUL byte")
	}
	data, err := readAgeKeyFile(raw, "recipients")
	if err != nil {
		return err
	}
	var out []string
	err = ageFileLines(data, func(n int, line string) error {
		if looksLikeAgeIdentity(line) {
			return fmt.Errorf("%s: line %d is an age secret key (identity), not a recipient; the line is not shown: put its public key here (age-keygen -y FILE prints it), and keep the secret key only in DRFLOW_AGE_IDENTITY_FILE on the workers that restore", raw, n)
		}
		canon, err := parseAgeRecipient(line)
		if err != nil {
			return fmt.Errorf("%s: line %d: %w", raw, n, err)
		}
		if !slices.Contains(out, canon) {
			out = append(out, canon)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(out) == 0 {
		return fmt.Errorf("%s holds no recipient (want one age public key per line, e.g. %s)", raw, exampleAgeRecipient)
	}
	// The lines parsed one by one for the messages; the file as age reads it.
	if _, err := age.ParseRecipients(bytes.NewReader(data)); err != nil {
		return fmt.Errorf("%s: %v (want one age public key per line, e.g. %s)", raw, err, exampleAgeRecipient)
	}
	c.Encryption.AgeRecipientsFile, c.Encryption.AgeFileRecipients = raw, out
	return nil
}

// ageIdentityFile stores DRFLOW_AGE_IDENTITY_FILE and the identities it
// holds, each checked with age.ParseIdentities. No error quotes the file's
// content or age's message about it (which may quote part of a key).
func ageIdentityFile(c *Config, _ *variable, raw string) error {
	if strings.ContainsRune(raw, 0) {
		return errors.New("contains a NUL byte")
	}
	data, err := readAgeKeyFile(raw, "identity")
	if err != nil {
		return err
	}
	trimmed := bytes.TrimSpace(data)
	if bytes.HasPrefix(trimmed, []byte("age-encryption.org/")) || bytes.HasPrefix(trimmed, []byte("-----BEGIN AGE ENCRYPTED FILE-----")) {
		return fmt.Errorf("%s is itself age-encrypted (a passphrase-protected identity); drflow cannot prompt for the passphrase: give it the plain identity file, readable by the drflow user only", raw)
	}
	var ids []Secret
	err = ageFileLines(data, func(n int, line string) error {
		if _, err := age.ParseIdentities(strings.NewReader(line)); err != nil {
			return fmt.Errorf("%s: line %d is not an age identity; the line is not shown (want AGE-SECRET-KEY-1… lines as age-keygen writes them; SSH keys and plugins are not supported)", raw, n)
		}
		ids = append(ids, Secret(line))
		return nil
	})
	if err != nil {
		return err
	}
	if len(ids) == 0 {
		return fmt.Errorf("%s holds no identity (want AGE-SECRET-KEY-1… lines as age-keygen writes them)", raw)
	}
	c.Encryption.AgeIdentityFile, c.Encryption.AgeIdentities = raw, ids
	return nil
}

// readAgeKeyFile reads a recipients or identity file. Its errors hold the
// path, never the content.
func readAgeKeyFile(path, what string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w (want the path of an age %s file)", err, what)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxAgeKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxAgeKeyFile {
		return nil, fmt.Errorf("%s is larger than %d bytes: not an age %s file", path, maxAgeKeyFile, what)
	}
	return data, nil
}

// ageFileLines calls fn for each line of an age key file that is not empty
// or a # comment, with its 1-based number: the lines age.ParseRecipients and
// age.ParseIdentities parse, taken as they do (nothing is trimmed).
func ageFileLines(data []byte, fn func(n int, line string) error) error {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), maxAgeKeyFile)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !utf8.ValidString(line) {
			return fmt.Errorf("line %d is not valid UTF-8", n)
		}
		if err := fn(n, line); err != nil {
			return err
		}
	}
	return sc.Err()
}

// checkEncryption reports recipients that cannot be used together: age
// refuses to mix post-quantum (age1pq1…) and classic recipients in one file.
func (l *loader) checkEncryption() {
	rs := l.c.Encryption.Recipients()
	if len(rs) < 2 {
		return
	}
	parsed := make([]age.Recipient, 0, len(rs))
	for _, s := range rs {
		r, err := age.ParseRecipients(strings.NewReader(s))
		if err != nil {
			return // reported by the variable already
		}
		parsed = append(parsed, r[0])
	}
	if w, err := age.Encrypt(io.Discard, parsed...); err != nil {
		l.errs = append(l.errs, fmt.Errorf("%s and %s: %v (want recipients of one kind)", AgeRecipientsEnv, AgeRecipientsFileEnv, err))
	} else {
		_ = w.Close()
	}
}

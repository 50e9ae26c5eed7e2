package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

// ageFileFor returns the content of a valid file for env: a recipients file
// or an identity file as age-keygen writes it.
func ageFileFor(t *testing.T, env string) string {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	if env == AgeRecipientsFileEnv {
		return "# the recovery key\n" + id.Recipient().String() + "\n\n" + exampleAgeRecipient + "\n"
	}
	return "# created: 2026-11-21T02:00:00Z\n# public key: " + id.Recipient().String() + "\n" + id.String() + "\n"
}

func newAgeIdentity(t *testing.T) *age.X25519Identity {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	return id
}

func TestAgeRecipients(t *testing.T) {
	a, b, c := newAgeIdentity(t), newAgeIdentity(t), newAgeIdentity(t)
	ra, rb, rc := a.Recipient().String(), b.Recipient().String(), c.Recipient().String()

	t.Run("commas and spaces", func(t *testing.T) {
		cfg, err := Load("", env(map[string]string{AgeRecipientsEnv: ra + ", " + rb + "\n\t" + rc + ","}))
		require.NoError(t, err)
		assert.Equal(t, []string{ra, rb, rc}, cfg.Encryption.AgeRecipients)
		assert.Equal(t, []string{ra, rb, rc}, cfg.Encryption.Recipients())
	})
	t.Run("variable and file together, without repeats", func(t *testing.T) {
		file := writeFile(t, "recipients.txt", "# ops\n"+rb+"\n"+rc+"\n\n# again\n"+rb+"\n")
		cfg, err := Load("", env(map[string]string{AgeRecipientsEnv: ra + " " + rb, AgeRecipientsFileEnv: file}))
		require.NoError(t, err)
		assert.Equal(t, []string{ra, rb, rc}, cfg.Encryption.Recipients())
		assert.Equal(t, file, cfg.Encryption.AgeRecipientsFile)
		assert.Equal(t, []string{rb, rc}, cfg.Encryption.AgeFileRecipients)
	})
	t.Run("YAML file", func(t *testing.T) {
		file := writeFile(t, "recipients.txt", rc+"\n")
		cfgFile := writeFile(t, "drflow.yaml", fmt.Sprintf("encryption:\n  ageRecipients: %s %s\n  ageRecipientsFile: %s\n", ra, rb, file))
		cfg, err := Load(cfgFile, env(nil))
		require.NoError(t, err)
		assert.Equal(t, []string{ra, rb, rc}, cfg.Encryption.Recipients())
	})
	t.Run("none: not encrypted", func(t *testing.T) {
		cfg, err := Load("", env(nil))
		require.NoError(t, err)
		assert.Empty(t, cfg.Encryption.Recipients())
		assert.Empty(t, cfg.Encryption.RevealIdentities())
	})
	t.Run("post-quantum recipient", func(t *testing.T) {
		h, err := age.GenerateHybridIdentity()
		require.NoError(t, err)
		cfg, err := Load("", env(map[string]string{AgeRecipientsEnv: h.Recipient().String()}))
		require.NoError(t, err)
		assert.Equal(t, []string{h.Recipient().String()}, cfg.Encryption.Recipients())
	})
}

// TestAgeBadValues: every problem names the variable (and the entry or line),
// and no message shows a secret key, even one given where a public key belongs.
func TestAgeBadValues(t *testing.T) {
	id := newAgeIdentity(t)
	good, secretKey := id.Recipient().String(), id.String()
	// A recipient with its last character changed: its checksum fails.
	last := good[len(good)-1]
	broken := good[:len(good)-1] + map[bool]string{true: "q", false: "p"}[last != 'q']
	h, err := age.GenerateHybridIdentity()
	require.NoError(t, err)

	dir := t.TempDir()
	write := func(name, content string) string { return writeFile(t, name, content) }
	badRecipients := write("bad-recipients.txt", "# ok\n"+good+"\n"+broken+"\n")
	secretRecipients := write("secret-recipients.txt", good+"\n"+secretKey+"\n")
	emptyRecipients := write("empty-recipients.txt", "# nothing yet\n\n")
	badIdentity := write("bad-identity.txt", "# public key: "+good+"\n"+secretKey+"\n"+secretKey[:len(secretKey)-3]+"XYZ\n")
	pubAsIdentity := write("pub-identity.txt", good+"\n")
	emptyIdentity := write("empty-identity.txt", "# created\n")
	var encrypted bytes.Buffer
	w, err := age.Encrypt(&encrypted, id.Recipient())
	require.NoError(t, err)
	_, _ = w.Write([]byte(secretKey + "\n"))
	require.NoError(t, w.Close())
	protectedIdentity := write("protected-identity.age", encrypted.String())

	tests := []struct {
		name, env, value string
		want             []string
	}{
		{"bad checksum at position 2", AgeRecipientsEnv, good + "," + broken,
			[]string{"DRFLOW_AGE_RECIPIENTS: entry 2: malformed recipient", "invalid checksum", "(want an age public key such as age1"}},
		{"not a recipient", AgeRecipientsEnv, "ssh-ed25519 AAAAC3Nza",
			[]string{`DRFLOW_AGE_RECIPIENTS: entry 1: "ssh-ed25519" is not an age recipient`, "SSH keys and plugins are not supported"}},
		{"secret key as recipient", AgeRecipientsEnv, good + " " + secretKey,
			[]string{"DRFLOW_AGE_RECIPIENTS: entry 2: is an age secret key (identity), not a recipient; the value is not shown", "age-keygen -y"}},
		{"lower-case secret key as recipient", AgeRecipientsEnv, strings.ToLower(secretKey),
			[]string{"DRFLOW_AGE_RECIPIENTS: entry 1: is an age secret key"}},
		{"listed twice", AgeRecipientsEnv, good + "," + good,
			[]string{"DRFLOW_AGE_RECIPIENTS: entry 2: " + good + " is listed twice"}},
		{"only separators", AgeRecipientsEnv, ", ,",
			[]string{"DRFLOW_AGE_RECIPIENTS: no recipient in the value (want e.g. age1"}},
		{"recipients file: bad line", AgeRecipientsFileEnv, badRecipients,
			[]string{"DRFLOW_AGE_RECIPIENTS_FILE: " + badRecipients + ": line 3: malformed recipient", "invalid checksum"}},
		{"recipients file: secret key", AgeRecipientsFileEnv, secretRecipients,
			[]string{"DRFLOW_AGE_RECIPIENTS_FILE: " + secretRecipients + ": line 2 is an age secret key (identity), not a recipient; the line is not shown"}},
		{"recipients file: empty", AgeRecipientsFileEnv, emptyRecipients,
			[]string{"DRFLOW_AGE_RECIPIENTS_FILE: " + emptyRecipients + " holds no recipient"}},
		{"recipients file: missing", AgeRecipientsFileEnv, dir + "/nope.txt",
			[]string{"DRFLOW_AGE_RECIPIENTS_FILE: open " + dir + "/nope.txt: no such file or directory (want the path of an age recipients file)"}},
		{"identity file: bad line", AgeIdentityFileEnv, badIdentity,
			[]string{"DRFLOW_AGE_IDENTITY_FILE: " + badIdentity + ": line 3 is not an age identity; the line is not shown"}},
		{"identity file: a public key", AgeIdentityFileEnv, pubAsIdentity,
			[]string{"DRFLOW_AGE_IDENTITY_FILE: " + pubAsIdentity + ": line 1 is not an age identity"}},
		{"identity file: empty", AgeIdentityFileEnv, emptyIdentity,
			[]string{"DRFLOW_AGE_IDENTITY_FILE: " + emptyIdentity + " holds no identity"}},
		{"identity file: passphrase-protected", AgeIdentityFileEnv, protectedIdentity,
			[]string{"DRFLOW_AGE_IDENTITY_FILE: " + protectedIdentity + " is itself age-encrypted"}},
		{"identity file: missing", AgeIdentityFileEnv, dir + "/nope.txt",
			[]string{"DRFLOW_AGE_IDENTITY_FILE: open " + dir + "/nope.txt: no such file or directory (want the path of an age identity file)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load("", env(map[string]string{tt.env: tt.value}))
			require.Error(t, err)
			require.Len(t, errs(err), 1, err.Error())
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.NotContains(t, err.Error(), secretKey)
			assert.NotContains(t, strings.ToLower(err.Error()), strings.ToLower(secretKey[len("AGE-SECRET-KEY-1"):len("AGE-SECRET-KEY-1")+8]), "no part of the secret key")
		})
	}

	t.Run("post-quantum and classic mixed", func(t *testing.T) {
		_, err := Load("", env(map[string]string{AgeRecipientsEnv: good, AgeRecipientsFileEnv: write("pq.txt", h.Recipient().String()+"\n")}))
		require.Error(t, err)
		assert.Equal(t, []string{"DRFLOW_AGE_RECIPIENTS and DRFLOW_AGE_RECIPIENTS_FILE: incompatible recipients: can't mix post-quantum and classic recipients, or the file would be vulnerable to quantum computers (want recipients of one kind)"}, errs(err))
	})
}

// TestAgeIdentitiesAreSecret: the identity file's keys are held as Secret: in
// Secrets(), and in no printed form of the configuration.
func TestAgeIdentitiesAreSecret(t *testing.T) {
	a, b := newAgeIdentity(t), newAgeIdentity(t)
	file := writeFile(t, "identity.txt", "# created: 2026-11-21\n# public key: "+a.Recipient().String()+"\n"+a.String()+"\n"+b.String()+"\n")
	cfg, err := Load("", env(map[string]string{AgeIdentityFileEnv: file, AgeRecipientsEnv: a.Recipient().String()}))
	require.NoError(t, err)
	assert.Equal(t, file, cfg.Encryption.AgeIdentityFile)
	assert.Equal(t, []string{a.String(), b.String()}, cfg.Encryption.RevealIdentities())
	assert.Subset(t, cfg.Secrets(), []string{a.String(), b.String()})

	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "config", cfg)
	j, err := json.Marshal(cfg)
	require.NoError(t, err)
	y, err := yaml.Marshal(cfg)
	require.NoError(t, err)
	for name, out := range map[string]string{
		"%v": fmt.Sprintf("%v", cfg), "%+v": fmt.Sprintf("%+v", *cfg), "%#v": fmt.Sprintf("%#v", cfg),
		"json": string(j), "yaml": string(y), "slog": logged.String(),
	} {
		assert.NotContains(t, out, a.String(), name)
		assert.NotContains(t, out, b.String(), name)
		assert.Contains(t, out, a.Recipient().String(), "%s: the recipient is public and shown", name)
	}
	assert.NotContains(t, SecretVariables(), AgeIdentityFileEnv, "the variable holds a path, not a credential")
}

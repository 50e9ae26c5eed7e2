package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"golang.org/x/sync/errgroup"
)

// S3 limits and defaults.
const (
	DefaultPartSize    = 16 << 20
	DefaultConcurrency = 4
	MinPartSize        = 5 << 20 // S3: every part but the last
	MaxPartSize        = 5 << 30
	maxParts           = 10000

	// checkProbeKey is where Check starts (and aborts) a multipart upload to
	// prove the bucket writable; it is relative to the prefix.
	checkProbeKey = ".drflow-check"
	// abortTimeout bounds cleaning up after a failed upload, which runs even
	// when the Put's context is cancelled.
	abortTimeout = time.Minute
)

// S3Config configures an S3 store. Every S3-compatible service is a matter of
// configuration: AWS (Endpoint ""), MinIO (Endpoint "http://host:9000",
// ForcePathStyle), Cloudflare R2 (Region "auto"), Backblaze B2 …
//
// All printed forms (fmt verbs, slog) show SecretAccessKey as
// "**redacted**"; it has no JSON form.
type S3Config struct {
	// Bucket holds the backups (S3_BUCKET). Checked against the S3 naming
	// rules: 3–63 lowercase letters, digits, dots and hyphens.
	Bucket string
	// Endpoint is the service URL, "http(s)://host[:port]"; "" means AWS S3.
	// A bare host:port is taken as https.
	Endpoint string
	// Region is the signing region. "" means us-east-1 with an Endpoint, and
	// the AWS default chain (AWS_REGION, shared config) then us-east-1
	// without one.
	Region string
	// AccessKeyID and SecretAccessKey are static credentials. Both empty
	// means the AWS SDK's default credential chain (environment, shared
	// files, SSO, web identity, ECS/EC2 roles); one without the other is an
	// error.
	AccessKeyID     string
	SecretAccessKey string `json:"-"`
	// ForcePathStyle addresses buckets as host/bucket (MinIO and most
	// self-hosted services need it) instead of bucket.host.
	ForcePathStyle bool
	// Prefix is put before every key (with a "/" between); keys passed to
	// and returned by the store are relative to it. Leading and trailing
	// slashes are ignored; "" is the bucket root.
	Prefix string
	// PartSize is the multipart part size in bytes (default 16 MiB, from 5
	// MiB to 5 GiB). Objects smaller than a part are stored with one
	// PutObject. With 10,000 parts at most, it caps the size of an object
	// whose length is not known in advance (16 MiB: 156 GiB).
	PartSize int64
	// Concurrency is how many parts upload at once (default 4). A Put holds
	// at most PartSize × Concurrency bytes of buffers.
	Concurrency int
}

type plainS3Config S3Config // no methods: formats field by field

func (c S3Config) redacted() plainS3Config {
	p := plainS3Config(c)
	if p.SecretAccessKey != "" {
		p.SecretAccessKey = "**redacted**"
	}
	return p
}

// Format prints c with the secret key redacted, for every verb.
func (c S3Config) Format(f fmt.State, verb rune) {
	fmt.Fprintf(f, fmt.FormatString(f, verb), c.redacted())
}

// LogValue logs c with the secret key redacted.
func (c S3Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("bucket", c.Bucket),
		slog.String("endpoint", c.Endpoint),
		slog.String("region", c.Region),
		slog.String("accessKeyId", c.AccessKeyID),
		slog.String("secretAccessKey", c.redacted().SecretAccessKey),
		slog.Bool("forcePathStyle", c.ForcePathStyle),
		slog.String("prefix", c.Prefix),
	)
}

// S3 is a Store in an S3 bucket, through aws-sdk-go-v2.
//
// Put streams: it reads r one part at a time into at most Concurrency
// buffers of PartSize, uploads parts in parallel while reading on, and never
// stages the stream on disk. Input shorter than a part is one PutObject;
// anything longer is a multipart upload that is completed only after every
// part is stored, and aborted (then checked gone) on any failure or
// cancellation, so no orphaned parts are billed. Request checksums are sent
// only where the API requires them, for compatibility with services that
// reject the SDK's newer default trailers (R2, B2, older MinIO); integrity
// rests on TLS or SigV4 payload signing, and the SHA-256 in each manifest.
//
// Retries: requests are retried by the SDK a few times within seconds, so a
// dead endpoint fails fast and the caller (Temporal) retries the step; only
// part uploads of a started multipart upload retry longer, so one hiccup
// does not restart a multi-gigabyte upload.
type S3 struct {
	client      *s3.Client
	bucket      string
	prefix      string // "" or ending in "/"
	where       string // endpoint for messages
	partSize    int64
	concurrency int
	bufs        sync.Pool // *[]byte of partSize

	quick aws.Retryer // every request but part uploads
	parts aws.Retryer // UploadPart, CompleteMultipartUpload, AbortMultipartUpload
}

var _ Store = (*S3)(nil)

// NewS3 returns a store for cfg. It checks the configuration and, without
// static keys, resolves the default credential chain; it makes no request
// to the bucket (see Check).
func NewS3(ctx context.Context, cfg S3Config) (*S3, error) {
	if err := CheckBucketName(cfg.Bucket); err != nil {
		return nil, &storeError{
			msg:  fmt.Sprintf("backup store: %v (S3_BUCKET)", err),
			errs: []error{ErrInvalidBucket},
		}
	}
	endpoint, err := normalizeEndpoint(cfg.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("backup store: endpoint %w (S3_ENDPOINT)", err)
	}
	if (cfg.AccessKeyID == "") != (cfg.SecretAccessKey == "") {
		return nil, errors.New("backup store: set both the access key id and the secret access key, or neither for the default credential chain (S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY)")
	}
	partSize := cfg.PartSize
	if partSize == 0 {
		partSize = DefaultPartSize
	}
	if partSize < MinPartSize || partSize > MaxPartSize {
		return nil, fmt.Errorf("backup store: part size %d is not between %d (5 MiB) and %d (5 GiB)", partSize, MinPartSize, MaxPartSize)
	}
	conc := cfg.Concurrency
	if conc == 0 {
		conc = DefaultConcurrency
	}
	if conc < 1 {
		return nil, fmt.Errorf("backup store: concurrency %d is less than 1", conc)
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		if why := keyProblem(prefix, false); why != "" {
			return nil, fmt.Errorf("backup store: prefix %q %s (S3_PREFIX)", prefix, why)
		}
		prefix += "/"
	}

	httpClient := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = 5 * time.Second }).
		WithTransportOptions(func(t *http.Transport) {
			t.TLSHandshakeTimeout = 10 * time.Second
			// Time from a request fully sent to the response headers: a
			// server that stops answering is given up on and retried.
			t.ResponseHeaderTimeout = 2 * time.Minute
			t.MaxIdleConnsPerHost = conc + 4
		})
	newRetryer := func(attempts int, maxBackoff time.Duration) aws.Retryer {
		return retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = attempts
			o.MaxBackoff = maxBackoff
			// No client-side retry quota: a store that failed many requests
			// must not make later ones fail without being tried.
			o.RateLimiter = ratelimit.None
		})
	}
	quick := newRetryer(3, 2*time.Second)

	var awsCfg aws.Config
	region := cfg.Region
	if cfg.AccessKeyID != "" {
		if region == "" {
			region = "us-east-1"
		}
		awsCfg = aws.Config{
			Region: region,
			Credentials: aws.NewCredentialsCache(
				credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, "")),
		}
	} else {
		opts := []func(*config.LoadOptions) error{}
		if region != "" {
			opts = append(opts, config.WithRegion(region))
		}
		awsCfg, err = config.LoadDefaultConfig(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("backup store: load the AWS default configuration: %w", err)
		}
		if awsCfg.Region == "" {
			awsCfg.Region = "us-east-1"
		}
		region = awsCfg.Region
	}
	awsCfg.HTTPClient = httpClient
	awsCfg.Retryer = func() aws.Retryer { return quick }
	awsCfg.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
	awsCfg.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired

	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
		o.UsePathStyle = cfg.ForcePathStyle
		o.DisableLogOutputChecksumValidationSkipped = true
	})
	where := endpoint
	if where == "" {
		where = "AWS S3 (" + region + ")"
	}
	s := &S3{
		client:      client,
		bucket:      cfg.Bucket,
		prefix:      prefix,
		where:       where,
		partSize:    partSize,
		concurrency: conc,
		quick:       quick,
		parts:       newRetryer(6, 10*time.Second),
	}
	s.bufs.New = func() any { b := make([]byte, s.partSize); return &b }
	return s, nil
}

// Bucket returns the bucket name.
func (s *S3) Bucket() string { return s.bucket }

// Prefix returns the key prefix, "" or ending in "/".
func (s *S3) Prefix() string { return s.prefix }

func (s *S3) useParts(o *s3.Options) { o.Retryer = s.parts }

func (s *S3) fullKey(key string) (string, error) {
	if err := CheckKey(key); err != nil {
		return "", err
	}
	if full := s.prefix + key; len(full) > MaxKeyLen {
		return "", fmt.Errorf("%w %q: with the prefix it is %d bytes long, more than %d", ErrInvalidKey, key, len(full), MaxKeyLen)
	}
	return s.prefix + key, nil
}

// Check verifies that the bucket exists and is writable with these
// credentials: HeadBucket, then a multipart upload started and aborted at
// <prefix>/.drflow-check (proves s3:PutObject and s3:AbortMultipartUpload
// without creating an object or an object version). Errors name the bucket
// and the endpoint, match the shared sentinels (ErrNoSuchBucket,
// ErrBadCredentials, ErrAccessDenied, ErrInvalidBucket) and say which setting
// to fix; an unreachable endpoint is a transient error.
func (s *S3) Check(ctx context.Context) error {
	_, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &s.bucket})
	if err != nil {
		if code, sentinel := classify(err); sentinel == ErrNotFound {
			err = &storeError{msg: err.Error(), errs: []error{ErrNoSuchBucket, err}}
		} else if !isConnError(err) && (code == "" || code == "Forbidden" || code == "BadRequest" || code == "MovedPermanently") {
			// A HEAD answer has no body, so no error code: ask again with a
			// request whose error says what is wrong.
			one := int32(1)
			if _, lerr := s.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{
				Bucket: &s.bucket, Prefix: aws.String(s.prefix), MaxKeys: &one,
			}); lerr != nil {
				err = lerr
			}
		}
		return s.checkError(err, "")
	}
	key := s.prefix + checkProbeKey
	out, err := s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		return s.checkError(err, "is not writable")
	}
	if err := s.abort(ctx, key, aws.ToString(out.UploadId)); err != nil {
		return s.checkError(err, "is writable, but an upload cannot be aborted")
	}
	return nil
}

func (s *S3) checkError(err error, what string) error {
	code, sentinel := classify(err)
	var msg string
	switch {
	case errors.Is(err, ErrNoSuchBucket) || sentinel == ErrNoSuchBucket:
		sentinel = ErrNoSuchBucket
		msg = fmt.Sprintf("backup store: bucket %q does not exist at %s (S3_BUCKET)", s.bucket, s.where)
	case sentinel == ErrBadCredentials:
		why := "the credentials were rejected"
		switch code {
		case "InvalidAccessKeyId":
			why = "the access key id is not known"
		case "SignatureDoesNotMatch":
			why = "the secret access key does not match the access key id"
		}
		msg = fmt.Sprintf("backup store: %s at %s, bucket %q (S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY): %v", why, s.where, s.bucket, err)
	case sentinel == ErrAccessDenied:
		msg = fmt.Sprintf("backup store: access to bucket %q at %s is denied; the key needs s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject and s3:AbortMultipartUpload (S3_ACCESS_KEY_ID): %v", s.bucket, s.where, err)
	case sentinel == ErrInvalidBucket:
		msg = fmt.Sprintf("backup store: %s rejects bucket name %q (S3_BUCKET): %v", s.where, s.bucket, err)
	case code == "PermanentRedirect" || code == "AuthorizationHeaderMalformed" || code == "MovedPermanently":
		msg = fmt.Sprintf("backup store: bucket %q is not in the region requests to %s are signed for (S3_REGION): %v", s.bucket, s.where, err)
	case isConnError(err):
		msg = fmt.Sprintf("backup store: cannot reach %s (S3_ENDPOINT) for bucket %q: %v", s.where, s.bucket, err)
	default:
		if what == "" {
			what = "cannot be used"
		}
		msg = fmt.Sprintf("backup store: bucket %q at %s %s: %v", s.bucket, s.where, what, err)
	}
	errs := []error{err}
	if sentinel != nil {
		errs = []error{sentinel, err}
	}
	return &storeError{msg: msg, errs: errs}
}

// Put implements Store.
func (s *S3) Put(ctx context.Context, key string, r io.Reader, opts PutOptions) (int64, error) {
	full, err := s.fullKey(key)
	if err != nil {
		return 0, opError("put", key, err)
	}
	if err := ctx.Err(); err != nil {
		return 0, opError("put", key, err)
	}
	n, err := s.put(ctx, full, r, opts)
	if err != nil {
		return 0, s.mapErr("put", key, err)
	}
	return n, nil
}

func (s *S3) put(ctx context.Context, full string, r io.Reader, opts PutOptions) (int64, error) {
	partSize := s.partSize
	if opts.SizeHint > partSize*maxParts {
		partSize = (opts.SizeHint + maxParts - 1) / maxParts
		partSize = (partSize + 1<<20 - 1) &^ (1<<20 - 1) // whole MiB
		if partSize > MaxPartSize {
			return 0, fmt.Errorf("%w: %d bytes is more than S3's 10,000 parts of 5 GiB", ErrTooLarge, opts.SizeHint)
		}
	}
	getBuf, putBuf := s.bufs.Get, s.bufs.Put
	if partSize != s.partSize {
		getBuf = func() any { b := make([]byte, partSize); return &b }
		putBuf = func(any) {}
	}
	var contentType *string
	if opts.ContentType != "" {
		contentType = aws.String(opts.ContentType)
	}
	r = ctxReader{ctx: ctx, r: r}

	first := getBuf().(*[]byte)
	n, err := io.ReadFull(r, *first)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		defer putBuf(first)
		_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
			Bucket:        &s.bucket,
			Key:           &full,
			Body:          bytes.NewReader((*first)[:n]),
			ContentLength: aws.Int64(int64(n)),
			ContentType:   contentType,
		})
		if err != nil {
			return 0, err
		}
		if opts.Progress != nil {
			opts.Progress(int64(n))
		}
		return int64(n), nil
	}
	if err != nil {
		putBuf(first)
		return 0, err
	}

	create, err := s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket: &s.bucket, Key: &full, ContentType: contentType,
	})
	if err != nil {
		putBuf(first)
		return 0, err
	}
	uploadID := aws.ToString(create.UploadId)
	total, parts, err := s.uploadParts(ctx, full, uploadID, r, first, partSize, getBuf, putBuf, opts.Progress)
	if err == nil {
		err = ctx.Err() // a cancelled Put must not complete
	}
	if err == nil {
		slices.SortFunc(parts, func(a, b types.CompletedPart) int { return int(*a.PartNumber - *b.PartNumber) })
		_, err = s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
			Bucket: &s.bucket, Key: &full, UploadId: &uploadID,
			MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
		}, s.useParts)
	}
	if err != nil {
		if aerr := s.abort(ctx, full, uploadID); aerr != nil {
			err = errors.Join(err, aerr)
		}
		return 0, err
	}
	s.abortStale(ctx, full, uploadID)
	return total, nil
}

// abortStale aborts the unfinished multipart uploads of full other than keep: those of
// earlier Puts of the same key whose abort failed because the store was unreachable (a
// retried step writes the same key again), whose parts would otherwise stay stored, and
// billed, until a lifecycle rule removes them. Best effort: a failure leaves them to such
// a rule. S3 and MinIO list the uploads of one exact key with Prefix set to it.
func (s *S3) abortStale(ctx context.Context, full, keep string) {
	out, err := s.client.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &s.bucket, Prefix: &full})
	if err != nil {
		return
	}
	for _, u := range out.Uploads {
		if aws.ToString(u.Key) == full && aws.ToString(u.UploadId) != keep {
			_ = s.abort(ctx, full, aws.ToString(u.UploadId))
		}
	}
}

// uploadParts reads r into buffers of partSize, the first one already read
// into first, and uploads them with s.concurrency uploads in flight. At most
// s.concurrency buffers exist at a time: reading waits for a free one. It
// returns once every started upload has finished.
func (s *S3) uploadParts(ctx context.Context, full, uploadID string, r io.Reader, first *[]byte, partSize int64,
	getBuf func() any, putBuf func(any), progress func(int64),
) (int64, []types.CompletedPart, error) {
	var (
		mu    sync.Mutex
		parts []types.CompletedPart
		total int64
	)
	free := make(chan *[]byte, s.concurrency)
	allocated := 1
	defer func() {
		for {
			select {
			case b := <-free:
				putBuf(b)
			default:
				return
			}
		}
	}()

	g, gctx := errgroup.WithContext(ctx)
	var readErr error
	buf, n, last := first, len(*first), false
	for num := int32(1); ; num++ {
		if num > maxParts {
			free <- buf
			readErr = fmt.Errorf("%w: more than %d parts of %d bytes; raise the part size or pass a SizeHint", ErrTooLarge, maxParts, partSize)
			break
		}
		b, size := buf, n
		g.Go(func() error {
			defer func() { free <- b }()
			out, err := s.client.UploadPart(gctx, &s3.UploadPartInput{
				Bucket: &s.bucket, Key: &full, UploadId: &uploadID,
				PartNumber:    aws.Int32(num),
				Body:          bytes.NewReader((*b)[:size]),
				ContentLength: aws.Int64(int64(size)),
			}, s.useParts)
			if err != nil {
				return fmt.Errorf("part %d: %w", num, err)
			}
			mu.Lock()
			defer mu.Unlock()
			parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(num)})
			total += int64(size)
			if progress != nil {
				progress(total)
			}
			return nil
		})
		if last {
			break
		}
		if allocated < s.concurrency {
			buf = getBuf().(*[]byte)
			allocated++
		} else {
			select {
			case buf = <-free:
			case <-gctx.Done():
				buf = nil
			}
			if buf == nil {
				break // a part failed or ctx is done; g.Wait says why
			}
		}
		var err error
		n, err = io.ReadFull(r, *buf)
		if err == io.EOF {
			free <- buf
			break
		}
		if err == io.ErrUnexpectedEOF {
			last = true
		} else if err != nil {
			free <- buf
			readErr = err
			break
		}
	}
	werr := g.Wait()
	if readErr != nil {
		return 0, nil, readErr
	}
	if werr != nil {
		return 0, nil, werr
	}
	return total, parts, nil
}

// abort aborts a multipart upload, also when ctx is cancelled, and checks
// that it is gone: S3 may keep a part whose upload was in flight during the
// abort, in which case it must be aborted again.
func (s *S3) abort(ctx context.Context, full, uploadID string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	var err error
	for range 3 {
		_, err = s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
			Bucket: &s.bucket, Key: &full, UploadId: &uploadID,
		}, s.useParts)
		if err != nil && !isCode(err, "NoSuchUpload") {
			break
		}
		_, lerr := s.client.ListParts(ctx, &s3.ListPartsInput{
			Bucket: &s.bucket, Key: &full, UploadId: &uploadID,
		}, s.useParts)
		if lerr != nil && isCode(lerr, "NoSuchUpload") {
			return nil
		}
		err = lerr
		if err == nil {
			err = errors.New("upload still present after abort")
		}
	}
	return fmt.Errorf("abort multipart upload %s of %s (parts may stay stored until removed by a lifecycle rule): %w", uploadID, full, err)
}

// Get implements Store.
func (s *S3) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	full, err := s.fullKey(key)
	if err != nil {
		return nil, opError("get", key, err)
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &full})
	if err != nil {
		return nil, s.mapErr("get", key, err)
	}
	return out.Body, nil
}

// Stat implements Store.
func (s *S3) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	full, err := s.fullKey(key)
	if err != nil {
		return ObjectInfo{}, opError("stat", key, err)
	}
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &full})
	if err != nil {
		if _, sentinel := classify(err); sentinel == ErrNotFound {
			// A HEAD 404 does not say whether the object or the bucket is
			// missing; a missing bucket must not pass for a missing object.
			if _, berr := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &s.bucket}); berr != nil {
				if _, bs := classify(berr); bs == ErrNotFound {
					return ObjectInfo{}, s.mapErr("stat", key, &storeError{msg: berr.Error(), errs: []error{ErrNoSuchBucket, berr}})
				}
			}
		}
		return ObjectInfo{}, s.mapErr("stat", key, err)
	}
	return ObjectInfo{Key: key, Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified)}, nil
}

// List implements Store. Objects under the prefix whose relative key is not
// valid (written by other tools, such as console "folder/" markers) are
// skipped: no method could use their key.
func (s *S3) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	if err := checkPrefix(prefix); err != nil {
		return opError("list", prefix, err)
	}
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
		Bucket: &s.bucket,
		Prefix: aws.String(s.prefix + prefix),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return s.mapErr("list", prefix, err)
		}
		for _, obj := range page.Contents {
			key, ok := strings.CutPrefix(aws.ToString(obj.Key), s.prefix)
			if !ok || CheckKey(key) != nil {
				continue
			}
			if err := fn(ObjectInfo{Key: key, Size: aws.ToInt64(obj.Size), ModTime: aws.ToTime(obj.LastModified)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete implements Store.
func (s *S3) Delete(ctx context.Context, key string) error {
	full, err := s.fullKey(key)
	if err != nil {
		return opError("delete", key, err)
	}
	if _, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &full}); err != nil {
		if _, sentinel := classify(err); sentinel == ErrNotFound {
			return nil
		}
		return s.mapErr("delete", key, err)
	}
	return nil
}

// mapErr wraps an SDK error as "<op> <key>: <sentinel>: <error>", so
// errors.Is finds the shared sentinel and errors.As the SDK's error.
func (s *S3) mapErr(op, key string, err error) error {
	if errors.Is(err, ErrNoSuchBucket) {
		return &storeError{
			msg:  fmt.Sprintf("%s %s: bucket %q does not exist at %s", op, key, s.bucket, s.where),
			errs: []error{ErrNoSuchBucket, err},
		}
	}
	switch _, sentinel := classify(err); sentinel {
	case nil:
		return opError(op, key, err)
	case ErrNotFound:
		return opError(op, key, ErrNotFound)
	case ErrNoSuchBucket:
		return s.mapErr(op, key, &storeError{msg: err.Error(), errs: []error{ErrNoSuchBucket, err}})
	default:
		return fmt.Errorf("%s %s: %w: %w", op, key, sentinel, err)
	}
}

// classify maps an S3 error to a shared sentinel (nil when transient or
// unknown) and returns the S3 error code. A HEAD answer carries no body, so
// its code is derived from the status ("NotFound", "Forbidden"); a 404 there
// may mean a missing bucket, which callers with a key disambiguate.
//
// Only errors from S3 are classified: a reader's error passed through Put
// keeps its own meaning.
func classify(err error) (code string, sentinel error) {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		code = ae.ErrorCode()
	}
	switch code {
	case "NoSuchKey", "NotFound":
		return code, ErrNotFound
	case "NoSuchBucket":
		return code, ErrNoSuchBucket
	case "AccessDenied", "Forbidden", "AllAccessDisabled", "AccountProblem":
		return code, ErrAccessDenied
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken":
		return code, ErrBadCredentials
	case "InvalidBucketName":
		return code, ErrInvalidBucket
	case "KeyTooLongError", "XMinioInvalidObjectName":
		return code, ErrInvalidKey
	case "EntityTooLarge":
		return code, ErrTooLarge
	}
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		switch re.HTTPStatusCode() {
		case http.StatusNotFound:
			return code, ErrNotFound
		case http.StatusForbidden:
			return code, ErrAccessDenied
		}
	}
	return code, nil
}

func isCode(err error, code string) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == code
}

func isConnError(err error) bool {
	var se *smithyhttp.RequestSendError
	var ne net.Error
	return errors.As(err, &se) || errors.As(err, &ne)
}

// storeError has a message of its own and matches every error in errs.
type storeError struct {
	msg  string
	errs []error
}

func (e *storeError) Error() string   { return e.msg }
func (e *storeError) Unwrap() []error { return e.errs }

// CheckBucketName applies the S3 naming rules for general purpose buckets; the
// config package applies it to S3_BUCKET and DRFLOW_MINIO_BUCKETS.
func CheckBucketName(name string) error {
	var why string
	alnum := func(b byte) bool { return b >= 'a' && b <= 'z' || b >= '0' && b <= '9' }
	switch {
	case len(name) < 3 || len(name) > 63:
		why = fmt.Sprintf("it is %d characters long, not 3 to 63", len(name))
	case strings.IndexFunc(name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-')
	}) >= 0:
		why = "only lowercase letters, digits, dots and hyphens are allowed"
	case !alnum(name[0]) || !alnum(name[len(name)-1]):
		why = "it must start and end with a lowercase letter or digit"
	case strings.Contains(name, ".."):
		why = "it has two dots in a row"
	case net.ParseIP(name) != nil:
		why = "it looks like an IP address"
	default:
		return nil
	}
	return fmt.Errorf("%q is not a valid bucket name: %s", name, why)
}

// normalizeEndpoint returns scheme://host[:port][/path] or "" for AWS. The
// value is left out of errors when it may hold credentials.
func normalizeEndpoint(raw string) (string, error) {
	if raw == "" {
		return "", nil
	}
	s := raw
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	switch {
	case err == nil && u.User != nil:
		return "", errors.New("holds credentials (not shown); pass them as the access key and secret key")
	case err != nil || u.Host == "":
		if strings.Contains(raw, "@") {
			return "", errors.New("is not an http(s) URL (not shown: it may hold credentials)")
		}
		return "", fmt.Errorf("%q is not an http(s) URL or host:port", raw)
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("%q: scheme %q is not http or https", raw, u.Scheme)
	case u.RawQuery != "" || u.Fragment != "":
		return "", fmt.Errorf("%q has a query or fragment", raw)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("%q: port %q is not a number from 1 to 65535", raw, p)
		}
	}
	return strings.TrimRight(u.String(), "/"), nil
}

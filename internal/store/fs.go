package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// FS is a Store in a local directory, for laptops and single-host setups.
//
// Key "a/b/c" is the file <root>/a/b/c. Put writes a temporary file in the
// target directory (".drflow-tmp-…", never listed), fsyncs it, renames it
// into place and fsyncs the directory (and the parents of directories it
// created), so after Put returns the object survives a crash and before it
// returns no reader sees a partial one. A crash mid-Put can leave a
// temporary file behind; it is invisible to every method and may be removed
// by hand.
//
// Files are created 0600 and directories 0700: backups hold database dumps.
// Directories emptied by Delete are removed. Symbolic links are not
// followed by List.
//
// Unlike S3, a file system cannot hold both "a" and "a/b": such a Put fails
// with ErrInvalidKey. drflow's layout never needs both.
type FS struct {
	root string
}

var _ Store = (*FS)(nil)

// NewFS returns a store rooted at root, creating the directory (0700) if
// needed.
func NewFS(root string) (*FS, error) {
	if root == "" {
		return nil, errors.New("fs store: empty root directory")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("fs store %s: %w", root, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("fs store %s: %w", abs, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("fs store %s: %w", abs, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("fs store %s: not a directory", abs)
	}
	return &FS{root: abs}, nil
}

// Root returns the absolute root directory.
func (f *FS) Root() string { return f.root }

func (f *FS) path(key string) string {
	return filepath.Join(f.root, filepath.FromSlash(key))
}

// Put implements Store.
func (f *FS) Put(ctx context.Context, key string, r io.Reader, opts PutOptions) (int64, error) {
	if err := CheckKey(key); err != nil {
		return 0, opError("put", key, err)
	}
	if err := ctx.Err(); err != nil {
		return 0, opError("put", key, err)
	}
	n, err := f.put(ctx, key, r, opts)
	if err != nil {
		return 0, opError("put", key, err)
	}
	return n, nil
}

func (f *FS) put(ctx context.Context, key string, r io.Reader, opts PutOptions) (n int64, err error) {
	path := f.path(key)
	dir := filepath.Dir(path)

	// A concurrent Delete may remove a directory we just created (it prunes
	// empty ones); creating the temporary file then fails with ENOENT, and we
	// create the directory again.
	var (
		tmp     *os.File
		created []string
	)
	for attempt := 0; ; attempt++ {
		c, err := f.mkdirs(dir)
		created = append(created, c...)
		if err != nil {
			return 0, err
		}
		tmp, err = os.CreateTemp(dir, tmpPrefix+"*")
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) || attempt == 3 {
			return 0, fsWriteError(err)
		}
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	w := &progressWriter{w: tmp, fn: opts.Progress}
	buf := make([]byte, 1<<20)
	n, err = io.CopyBuffer(w, ctxReader{ctx: ctx, r: r}, buf)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
			err = fmt.Errorf("%w (%w)", cerr, err)
		}
		return 0, err
	}
	if err := tmp.Sync(); err != nil {
		return 0, fsWriteError(err)
	}
	if err := tmp.Close(); err != nil {
		return 0, fsWriteError(err)
	}
	// Last chance to give up: after the rename the object is visible.
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		if fi, serr := os.Lstat(path); serr == nil && fi.IsDir() {
			return 0, fmt.Errorf("%w %q: a directory of other objects has this name", ErrInvalidKey, key)
		}
		return 0, fsWriteError(err)
	}
	committed = true
	// The rename is durable only once the directory is synced; until then a
	// crash could lose an object Put reported stored, so a failed sync undoes
	// the Put.
	for _, d := range append([]string{dir}, created...) {
		if err := syncDir(d); err != nil {
			os.Remove(path)
			return 0, fsWriteError(err)
		}
	}
	return n, nil
}

// mkdirs creates dir and its missing parents below the root, returning the
// parents of the directories it created (they must be synced for the new
// entries to be durable).
func (f *FS) mkdirs(dir string) (syncs []string, err error) {
	rel, err := filepath.Rel(f.root, dir)
	if err != nil || rel == "." {
		return nil, err
	}
	cur := f.root
	for _, seg := range strings.Split(rel, string(filepath.Separator)) {
		parent := cur
		cur = filepath.Join(cur, seg)
		err := os.Mkdir(cur, 0o700)
		switch {
		case err == nil:
			syncs = append(syncs, parent)
		case errors.Is(err, fs.ErrExist):
			fi, serr := os.Stat(cur)
			if serr == nil && !fi.IsDir() {
				return syncs, fmt.Errorf("%w: %q is an object, so no key can be below it",
					ErrInvalidKey, filepath.ToSlash(strings.TrimPrefix(cur, f.root+string(filepath.Separator))))
			}
		default:
			return syncs, fsWriteError(err)
		}
	}
	return syncs, nil
}

// Get implements Store.
func (f *FS) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := CheckKey(key); err != nil {
		return nil, opError("get", key, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, opError("get", key, err)
	}
	file, err := os.Open(f.path(key))
	if err != nil {
		return nil, opError("get", key, fsError(err))
	}
	fi, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, opError("get", key, fsError(err))
	}
	if !fi.Mode().IsRegular() {
		file.Close()
		return nil, opError("get", key, ErrNotFound)
	}
	return file, nil
}

// Stat implements Store.
func (f *FS) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if err := CheckKey(key); err != nil {
		return ObjectInfo{}, opError("stat", key, err)
	}
	if err := ctx.Err(); err != nil {
		return ObjectInfo{}, opError("stat", key, err)
	}
	fi, err := os.Stat(f.path(key))
	if err != nil {
		return ObjectInfo{}, opError("stat", key, fsError(err))
	}
	if !fi.Mode().IsRegular() {
		return ObjectInfo{}, opError("stat", key, ErrNotFound)
	}
	return ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// List implements Store.
//
// Directories are read one at a time and their entries ordered as keys
// order them (a directory "a" sorts as "a/", so "a-b" comes before
// "a/c"), which yields the lexical key order S3 gives without reading the
// whole tree first.
func (f *FS) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	if err := checkPrefix(prefix); err != nil {
		return opError("list", prefix, err)
	}
	// Start in the deepest directory the prefix names in full.
	base := prefix[:strings.LastIndex(prefix, "/")+1]
	err := f.walk(ctx, f.path(base), base, prefix, fn)
	var fe *fnError
	if errors.As(err, &fe) {
		return fe.err
	}
	if err != nil {
		return opError("list", prefix, err)
	}
	return nil
}

// fnError carries an error returned by List's fn out of the walk, so List
// returns it unchanged.
type fnError struct{ err error }

func (e *fnError) Error() string { return e.err.Error() }

func (f *FS) walk(ctx context.Context, dir, keyDir, prefix string, fn func(ObjectInfo) error) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil // no such prefix, or removed while we walked
		}
		return fsError(err)
	}
	sortName := func(e fs.DirEntry) string {
		if e.IsDir() {
			return e.Name() + "/"
		}
		return e.Name()
	}
	slices.SortFunc(entries, func(a, b fs.DirEntry) int { return strings.Compare(sortName(a), sortName(b)) })
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		name := e.Name()
		key := keyDir + name
		switch {
		case e.IsDir():
			sub := key + "/"
			if strings.HasPrefix(sub, prefix) || strings.HasPrefix(prefix, sub) {
				if err := f.walk(ctx, filepath.Join(dir, name), sub, prefix, fn); err != nil {
					return err
				}
			}
		case e.Type().IsRegular() && !strings.HasPrefix(name, tmpPrefix) && strings.HasPrefix(key, prefix):
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // deleted while we walked
			}
			if err != nil {
				return fsError(err)
			}
			if err := fn(ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
				return &fnError{err}
			}
		}
	}
	return nil
}

// Delete implements Store. It also removes the directories the deletion
// left empty, up to (not including) the root.
func (f *FS) Delete(ctx context.Context, key string) error {
	if err := CheckKey(key); err != nil {
		return opError("delete", key, err)
	}
	if err := ctx.Err(); err != nil {
		return opError("delete", key, err)
	}
	path := f.path(key)
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return nil
	case err != nil:
		return opError("delete", key, fsError(err))
	case fi.IsDir():
		return nil // a "directory" of other keys is not an object
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return opError("delete", key, fsError(err))
	}
	for dir := filepath.Dir(path); dir != f.root && strings.HasPrefix(dir, f.root); dir = filepath.Dir(dir) {
		if os.Remove(dir) != nil {
			break // not empty (or being filled by a Put): keep it
		}
	}
	return nil
}

// fsWriteError maps errors of writing: a vanished path there is not a
// missing object.
func fsWriteError(err error) error {
	switch {
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%w: %w", ErrAccessDenied, err)
	case errors.Is(err, syscall.ENAMETOOLONG):
		return fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	return err
}

// fsError maps file system errors to the shared sentinels, keeping the
// original (with its path) for the message.
func fsError(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return ErrNotFound
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%w: %w", ErrAccessDenied, err)
	case errors.Is(err, syscall.ENAMETOOLONG):
		return fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return err
	}
	return d.Close()
}

// ctxReader stops a copy once ctx is done, between reads.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// progressWriter reports the running total after every write.
type progressWriter struct {
	w     io.Writer
	fn    func(int64)
	total int64
}

func (p *progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	p.total += int64(n)
	if p.fn != nil && n > 0 {
		p.fn(p.total)
	}
	return n, err
}

package lockbox

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"lockbox.dev/lockbox/internal/wire"
)

// DefaultReadLimit is the most ReadFile returns unless WithMaxBytes says
// otherwise.
const DefaultReadLimit int64 = 64 << 20

// DefaultCopyLimit is the most file content one CopyToHost writes to the
// host unless WithMaxBytes says otherwise. A sparse file counts with its
// apparent size (the host copy is written in full).
const DefaultCopyLimit int64 = 1 << 30

// FileOption changes one ReadFile or CopyToHost call.
type FileOption func(*fileConfig)

type fileConfig struct{ maxBytes *int64 }

// WithMaxBytes caps what ReadFile returns or what CopyToHost writes to
// the host at n bytes (NoLimit: no cap). Past it the call fails with an
// error matching ErrSizeLimit (and ErrResourceExhausted).
func WithMaxBytes(n int64) FileOption { return func(c *fileConfig) { c.maxBytes = &n } }

func fileOptions(def int64, opts []FileOption) int64 {
	var c fileConfig
	for _, o := range opts {
		o(&c)
	}
	if c.maxBytes == nil {
		return def
	}
	return *c.maxBytes
}

// FS is a sandbox's file system. Every path is absolute inside the sandbox
// and resolved inside its root: no symlink, ".." or /proc trick reaches a
// host path. Calls act as the sandbox's user (WithUser), so a link that
// user planted is followed with its rights only; As picks another user.
// File contents stream; nothing is base64-encoded.
type FS struct {
	sb   *Sandbox
	user string // "" for the sandbox's own user
}

// FS returns the sandbox's file system, acting as the sandbox's user.
func (s *Sandbox) FS() *FS { return &FS{sb: s} }

// As returns the same file system acting as user inside the sandbox:
// "root", a name from the image's /etc/passwd, "uid" or "uid:gid". Only
// ask for a user more privileged than the sandbox's own when you mean it:
// its calls follow links that less privileged code inside may have made.
func (f *FS) As(user string) *FS { return &FS{sb: f.sb, user: user} }

// FileInfo describes a file in a sandbox; it implements fs.FileInfo.
type FileInfo struct {
	name    string
	size    int64
	mode    fs.FileMode
	modTime time.Time
	link    string
}

func (f *FileInfo) Name() string       { return f.name }
func (f *FileInfo) Size() int64        { return f.size }
func (f *FileInfo) Mode() fs.FileMode  { return f.mode }
func (f *FileInfo) ModTime() time.Time { return f.modTime }
func (f *FileInfo) IsDir() bool        { return f.mode.IsDir() }
func (f *FileInfo) Sys() any           { return nil }

// LinkTarget is a symlink's target as stored ("" for other files).
func (f *FileInfo) LinkTarget() string { return f.link }

// fileInfo is the public form of an fs.stat result.
func fileInfo(w *wire.FileInfo) *FileInfo {
	m := fs.FileMode(w.Mode & 0o777)
	if w.Mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if w.Mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if w.Mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	switch w.Kind {
	case "dir":
		m |= fs.ModeDir
	case "symlink":
		m |= fs.ModeSymlink
	case "other":
		m |= fs.ModeIrregular
	}
	fi := &FileInfo{name: w.Name, size: w.Size, mode: m, modTime: time.Unix(w.Mtime, 0)}
	if w.LinkTarget != nil {
		fi.link = *w.LinkTarget
	}
	return fi
}

// target is who a file call acts in and as.
func (f *FS) target(h uint64) wire.FSTarget { return wire.FSTarget{Sandbox: h, User: f.user} }

// fsCall runs m on f's sandbox: params gets the target (sandbox handle and
// user) from at before it is sent.
func fsCall[P, R any](ctx context.Context, f *FS, m wire.Method[P, R], p *P, at *wire.FSTarget, r *R) error {
	return f.sb.ref.use(m.Name, func(h uint64) error {
		*at = f.target(h)
		return callMethod(ctx, m.Name, m, p, r)
	})
}

// pathCall is fsCall for the methods that take just a path.
func pathCall[R any](ctx context.Context, f *FS, m wire.Method[wire.FSPathParams, R], path string, r *R) error {
	p := wire.FSPathParams{Path: path}
	return fsCall(ctx, f, m, &p, &p.FSTarget, r)
}

// mode is perm as the file calls send it: the permission bits.
func mode(perm fs.FileMode) *uint32 {
	m := uint32(perm.Perm())
	return &m
}

// Stat describes path (a symlink itself, not its target).
func (f *FS) Stat(ctx context.Context, path string) (*FileInfo, error) {
	var w wire.FileInfo
	if err := pathCall(ctx, f, wire.FSStat, path, &w); err != nil {
		return nil, err
	}
	return fileInfo(&w), nil
}

// Exists reports whether path exists.
func (f *FS) Exists(ctx context.Context, path string) (bool, error) {
	_, err := f.Stat(ctx, path)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// ReadDir lists a directory.
func (f *FS) ReadDir(ctx context.Context, path string) ([]*FileInfo, error) {
	var r wire.FSReadDirResult
	if err := pathCall(ctx, f, wire.FSReadDir, path, &r); err != nil {
		return nil, err
	}
	out := make([]*FileInfo, len(r.Entries))
	for i := range r.Entries {
		out[i] = fileInfo(&r.Entries[i])
	}
	return out, nil
}

// MkdirAll makes path and any missing parents.
func (f *FS) MkdirAll(ctx context.Context, path string, perm fs.FileMode) error {
	p := wire.FSModeParams{Path: path, Mode: mode(perm)}
	return fsCall(ctx, f, wire.FSMkdirAll, &p, &p.FSTarget, nil)
}

// Remove deletes a file or an empty directory.
func (f *FS) Remove(ctx context.Context, path string) error {
	return pathCall[wire.Empty](ctx, f, wire.FSRemove, path, nil)
}

// RemoveAll deletes path and everything under it; a missing path is fine.
func (f *FS) RemoveAll(ctx context.Context, path string) error {
	return pathCall[wire.Empty](ctx, f, wire.FSRemoveAll, path, nil)
}

// Rename moves from to to.
func (f *FS) Rename(ctx context.Context, from, to string) error {
	p := wire.FSRenameParams{From: from, To: to}
	return fsCall(ctx, f, wire.FSRename, &p, &p.FSTarget, nil)
}

// Symlink makes link point at target.
func (f *FS) Symlink(ctx context.Context, target, link string) error {
	p := wire.FSSymlinkParams{Target: target, Link: link}
	return fsCall(ctx, f, wire.FSSymlink, &p, &p.FSTarget, nil)
}

// fileReader streams a sandbox file.
type fileReader struct {
	s *streamRef
	*streamReader
}

func (r *fileReader) Close() error { return r.s.close() }

// Open opens a file for reading; its contents stream as you read. Close it.
func (f *FS) Open(ctx context.Context, path string) (io.ReadCloser, error) {
	var r wire.StreamResult
	p := wire.FSOpenParams{Path: path}
	if err := fsCall(ctx, f, wire.FSOpen, &p, &p.FSTarget, &r); err != nil {
		return nil, err
	}
	s := newStreamRef(&r.Stream, f.sb.ref)
	return &fileReader{s: s, streamReader: s.reader(ctx, "fs.read")}, nil
}

// fileWriter streams into a sandbox file; Close completes it.
type fileWriter struct {
	s  *streamRef
	w  *streamWriter
	ok bool
}

func (w *fileWriter) Write(p []byte) (int, error) { return w.w.Write(p) }

// Close finishes the file and reports any error writing it.
func (w *fileWriter) Close() error {
	if w.ok {
		return nil
	}
	w.ok = true
	err := w.w.Close()
	_ = w.s.close()
	return err
}

// Create creates or truncates a file (mode 0644) and returns a writer for
// its contents. The file is complete once Close returns nil.
func (f *FS) Create(ctx context.Context, path string) (io.WriteCloser, error) {
	return f.CreateMode(ctx, path, 0o644)
}

// CreateMode is Create with a permission mode.
func (f *FS) CreateMode(ctx context.Context, path string, perm fs.FileMode) (io.WriteCloser, error) {
	var r wire.StreamResult
	p := wire.FSModeParams{Path: path, Mode: mode(perm)}
	if err := fsCall(ctx, f, wire.FSCreate, &p, &p.FSTarget, &r); err != nil {
		return nil, err
	}
	s := newStreamRef(&r.Stream, f.sb.ref)
	return &fileWriter{s: s, w: s.writer(ctx, "fs.write")}, nil
}

// ReadFile returns a regular file's contents (symlinks inside the sandbox
// are followed), at most DefaultReadLimit bytes unless WithMaxBytes says
// otherwise. A FIFO, device or socket is ErrInvalidArgument; a file larger
// than the limit is ErrSizeLimit. Use Open to stream anything bigger.
func (f *FS) ReadFile(ctx context.Context, path string, opts ...FileOption) ([]byte, error) {
	limit := fileOptions(DefaultReadLimit, opts)
	var r wire.StreamResult
	p := wire.FSOpenParams{Path: path, Regular: true}
	if err := fsCall(ctx, f, wire.FSOpen, &p, &p.FSTarget, &r); err != nil {
		return nil, err
	}
	s := newStreamRef(&r.Stream, f.sb.ref)
	defer s.close()
	rd := io.Reader(s.reader(ctx, "fs.read"))
	if limit < 0 {
		return io.ReadAll(rd)
	}
	b, err := io.ReadAll(io.LimitReader(rd, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, limitError("fs.read_file", path+" is larger than the read limit of "+
			strconv.FormatInt(limit, 10)+" bytes", ErrSizeLimit)
	}
	return b, nil
}

// WriteFile writes data to a file, creating or truncating it.
func (f *FS) WriteFile(ctx context.Context, path string, data []byte, perm fs.FileMode) error {
	w, err := f.CreateMode(ctx, path, perm)
	if err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		_ = w.Close()
		return err
	}
	return w.Close()
}

// CopyFromHost copies a host file or directory tree into the sandbox at
// sandboxPath. hostPath must not pass through a symlink (ErrInvalidArgument
// names it): any directory on it may sit in a volume a sandbox can write.
// Below it nothing is followed: host symlinks are copied as symlinks, only
// regular files and directories are copied, and a file is copied up to
// the size it had when it was opened. A relative hostPath is relative to
// the process's working directory, as with os.Open.
func (f *FS) CopyFromHost(ctx context.Context, hostPath, sandboxPath string) error {
	abs, err := filepath.Abs(hostPath)
	if err != nil {
		return &Error{Op: "fs.copy_from_host", Code: CodeInvalidArgument, Message: err.Error()}
	}
	p := wire.FSCopyParams{Src: abs, Dst: sandboxPath}
	return fsCall[wire.FSCopyParams, wire.FSCopyResult](ctx, f, wire.FSCopyFromHost, &p, &p.FSTarget, nil)
}

// CopyToHost copies a sandbox file or directory tree to hostPath (a
// relative hostPath is relative to the working directory). The
// directory holding hostPath must be named without passing through a
// symlink (ErrInvalidArgument names it). Entries are created under it
// without following any symlink, so a symlink made in the sandbox is
// copied as a symlink and never written through, and an existing host
// file at a destination name is replaced, never written through. Only
// regular files, directories and symlinks are copied; each file up to the
// size the sandbox reported for it. At most DefaultCopyLimit bytes are
// written unless WithMaxBytes says otherwise, counting file contents plus
// 4 KiB for every entry created; past it the copy stops with ErrSizeLimit
// (what was written stays).
func (f *FS) CopyToHost(ctx context.Context, sandboxPath, hostPath string, opts ...FileOption) error {
	abs, err := filepath.Abs(hostPath)
	if err != nil {
		return &Error{Op: "fs.copy_to_host", Code: CodeInvalidArgument, Message: err.Error()}
	}
	limit := fileOptions(DefaultCopyLimit, opts)
	maxBytes := uint64(math.MaxUint64)
	if limit >= 0 {
		maxBytes = uint64(limit)
	}
	p := wire.FSCopyToHostParams{Src: sandboxPath, Dst: abs, MaxBytes: &maxBytes}
	err = fsCall[wire.FSCopyToHostParams, wire.FSCopyResult](ctx, f, wire.FSCopyToHost, &p, &p.FSTarget, nil)
	var e *Error
	if errors.As(err, &e) && e.Code == CodeResourceExhausted && strings.Contains(e.Message, "size limit:") {
		e.cause = ErrSizeLimit
	}
	return err
}

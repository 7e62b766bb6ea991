package storage

import (
	"errors"
	"io"
	"io/fs"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// openStoredFile opens a stored file for reading without updating its
// access time (O_NOATIME), as git reads its objects. Nothing here reads
// access times (last pulls are index records), and an update dirties the
// inode for ext4's journal, which an index commit's fdatasync may then
// have to write: under relatime, the first read of every stored file and
// one a day after. A file this process does not own (a data directory
// written by another user) refuses O_NOATIME without CAP_FOWNER, and is
// opened plainly.
//
// The file is opened with open(2) and kept as a bare descriptor
// (storedFile), not opened with os.OpenFile: on Linux that tries to add
// every file it opens to the network poller, which refuses a regular
// file, at the cost of three system calls more (fcntl, epoll_ctl, fcntl);
// and os.NewFile adds its own fcntl, a cleanup to register and its
// close's bookkeeping. Every hit opens a stored file: the open and its
// close cost ~12.5 µs through os.OpenFile on the project's machine, ~6.7
// through os.NewFile, and less again bare.
func openStoredFile(path string) (*storedFile, error) {
	fd, err := openStoredFD(path)
	if err != nil {
		return nil, err
	}
	return &storedFile{fd: fd, path: path}, nil
}

// openStoredSized opens a stored file (openStoredFile) and reads its
// size from it.
func openStoredSized(path string) (File, int64, error) {
	f, err := openStoredFile(path)
	if err != nil {
		return nil, 0, err
	}
	size, err := f.size()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, size, nil
}

// storedFile is a stored file open for reading, as a bare descriptor
// (see openStoredFile). It is a syscall.Conn, which is how net's sendfile
// takes it. Every use of the descriptor holds mu, and so does Close: a
// descriptor closed during a read could be given to another open and
// read in its place. Unlike an os.File it has no cleanup: whoever opens
// one closes it.
type storedFile struct {
	mu   sync.Mutex
	fd   int // -1 once closed
	path string
	// reads counts the calls to Read (tests: a copy to a socket should
	// make none, sendfile sending the bytes instead).
	reads int
}

var _ File = (*storedFile)(nil)

// errReadOnly is a write to a stored file's descriptor.
var errReadOnly = errors.New("stored file is open for reading only")

// use calls fn with the open descriptor, under mu.
func (f *storedFile) use(op string, fn func(fd int) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd < 0 {
		return &fs.PathError{Op: op, Path: f.path, Err: fs.ErrClosed}
	}
	return fn(f.fd)
}

// Read implements io.Reader.
func (f *storedFile) Read(b []byte) (n int, err error) {
	err = f.use("read", func(fd int) error {
		f.reads++
		for {
			n, err = unix.Read(fd, b)
			if !errors.Is(err, unix.EINTR) {
				break
			}
		}
		switch {
		case err != nil:
			n, err = 0, &fs.PathError{Op: "read", Path: f.path, Err: err}
		case n == 0 && len(b) > 0:
			err = io.EOF
		}
		return err
	})
	return n, err
}

// Seek implements io.Seeker: sendfile sends from the offset it sets.
func (f *storedFile) Seek(offset int64, whence int) (off int64, err error) {
	err = f.use("seek", func(fd int) error {
		off, err = unix.Seek(fd, offset, whence)
		if err != nil {
			return &fs.PathError{Op: "seek", Path: f.path, Err: err}
		}
		return nil
	})
	return off, err
}

// size is the file's size (fstat).
func (f *storedFile) size() (size int64, err error) {
	err = f.use("fstat", func(fd int) error {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return &fs.PathError{Op: "fstat", Path: f.path, Err: err}
		}
		size = st.Size
		return nil
	})
	return size, err
}

// Close implements io.Closer.
func (f *storedFile) Close() error {
	return f.use("close", func(fd int) error {
		f.fd = -1
		// Not retried on EINTR: the descriptor is released either way.
		if err := unix.Close(fd); err != nil {
			return &fs.PathError{Op: "close", Path: f.path, Err: err}
		}
		return nil
	})
}

// SyscallConn implements syscall.Conn.
func (f *storedFile) SyscallConn() (syscall.RawConn, error) { return storedConn{f}, nil }

// storedConn is a storedFile's syscall.RawConn.
type storedConn struct{ f *storedFile }

// Control implements syscall.RawConn.
func (c storedConn) Control(fn func(fd uintptr)) error {
	return c.f.use("control", func(fd int) error {
		fn(uintptr(fd))
		return nil
	})
}

// Read implements syscall.RawConn. A regular file is always ready: fn
// is called once (net's sendfile reports it handled the descriptor).
func (c storedConn) Read(fn func(fd uintptr) bool) error {
	return c.f.use("read", func(fd int) error {
		fn(uintptr(fd))
		return nil
	})
}

// Write implements syscall.RawConn: a stored file is never written.
func (c storedConn) Write(func(fd uintptr) bool) error { return errReadOnly }

// openStoredFD opens a stored file's descriptor as openStoredFile says:
// without updating its access time where the file allows it.
func openStoredFD(path string) (int, error) {
	fd, err := openRead(path, unix.O_NOATIME)
	if errors.Is(err, fs.ErrPermission) {
		fd, err = openRead(path, 0)
	}
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}

// openRead opens path read-only (close-on-exec) with the extra flags,
// again if a signal interrupts it, as os.OpenFile does.
func openRead(path string, flags int) (int, error) {
	for {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|flags, 0)
		if !errors.Is(err, unix.EINTR) {
			return fd, err
		}
	}
}

// readStoredFile reads a stored file into one buffer: its first size
// bytes if size >= 0 (fewer if it is shorter), else as many as fstat
// says it has, up to limit. The file is opened (as openStoredFile does),
// read and closed with system calls alone: an os.File would add its
// fcntl (NewFile checks the descriptor's flags), its cleanup and its
// close's bookkeeping, ~3.5 µs of a 1.5 KB manifest's ~12.5 µs read on
// the project's machine.
func readStoredFile(path string, size, limit int64) ([]byte, error) {
	fd, err := openStoredFD(path)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	if size < 0 {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return nil, &fs.PathError{Op: "fstat", Path: path, Err: err}
		}
		size = min(st.Size, limit)
	}
	b := make([]byte, size)
	got := 0
	for got < len(b) {
		n, err := unix.Pread(fd, b[got:], int64(got))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			break // shorter: what is there
		}
		got += n
	}
	return b[:got], nil
}

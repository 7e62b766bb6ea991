//go:build e2e && linux

package crash

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"unsafe"
)

// dieWithParent has the kernel SIGKILL the child if this test process
// dies without its cleanups (a -timeout panic, a signal), so no proxy
// outlives it. (It follows the thread that started the child, which Go
// only ends for goroutines locked to it; this package locks none.)
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// storeWatch tells, through inotify, when the proxy is in the middle of
// writing content into its store: writes go to a temporary file in
// DIR/.docker-mirror/uploads (created by the first write after a start) before it is
// verified and moved into place. A SIGKILL at that moment checks that a
// half-written file is never taken for content.
type storeWatch struct {
	f       *os.File
	data    string
	files   int // files to be created in the uploads directory before fire
	fire    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	uploads int32 // watch descriptor of the uploads directory, -1 until watched
	created int
}

// watchStore starts watching data; fire receives once the proxy has begun
// to write the files-th file into its store since the watch began.
// (inotify merges repeated writes to a file, so creations are counted.)
func watchStore(data string, files int) (*storeWatch, error) {
	fd, err := syscall.InotifyInit1(syscall.IN_NONBLOCK | syscall.IN_CLOEXEC)
	if err != nil {
		return nil, err
	}
	w := &storeWatch{f: os.NewFile(uintptr(fd), "inotify"), data: data, files: files,
		fire: make(chan struct{}, 1), done: make(chan struct{}), uploads: -1}
	// The mirror's own directory exists once it has started.
	if _, err := syscall.InotifyAddWatch(fd, filepath.Join(data, ownDir), syscall.IN_CREATE|syscall.IN_ONLYDIR); err != nil {
		w.f.Close()
		return nil, err
	}
	if err := w.watchUploads(); err != nil && !errors.Is(err, syscall.ENOENT) {
		w.f.Close()
		return nil, err
	}
	go w.run()
	return w, nil
}

func (w *storeWatch) watchUploads() error {
	wd, err := syscall.InotifyAddWatch(int(w.f.Fd()), filepath.Join(w.data, ownDir, "uploads"), syscall.IN_CREATE|syscall.IN_ONLYDIR)
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.uploads = int32(wd)
	w.mu.Unlock()
	return nil
}

func (w *storeWatch) run() {
	defer close(w.done)
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return // closed
		}
		for off := 0; off+syscall.SizeofInotifyEvent <= n; {
			ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameBytes := buf[off+syscall.SizeofInotifyEvent : off+syscall.SizeofInotifyEvent+int(ev.Len)]
			name := string(bytes.TrimRight(nameBytes, "\x00"))
			off += syscall.SizeofInotifyEvent + int(ev.Len)
			w.mu.Lock()
			uploads := w.uploads
			w.mu.Unlock()
			switch {
			case ev.Mask&syscall.IN_CREATE != 0 && name == "uploads" && uploads < 0:
				_ = w.watchUploads()
			case ev.Wd == uploads && ev.Mask&syscall.IN_CREATE != 0:
				w.created++
				if w.created >= w.files {
					select {
					case w.fire <- struct{}{}:
					default:
					}
				}
			}
		}
	}
}

// Close stops the watch.
func (w *storeWatch) Close() {
	w.f.Close()
	<-w.done
}

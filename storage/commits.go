package storage

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/trace"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// WriteRegion is the type of the execution trace's region (runtime/trace)
// of each index write: from before the write lock to its release in the
// commit.
const WriteRegion = "index write"

// slowCommit is how long a write transaction may hold bbolt's write lock
// (its work and its commit) before it is logged: every other write, a
// pull's record included, waits that long.
const slowCommit = 100 * time.Millisecond

// commitPhases is where one write transaction's time went, for the log of
// slow ones.
type commitPhases struct {
	// wait is how long it waited for the write lock (other writers).
	wait time.Duration
	// work is the transaction's own reads and writes (fn).
	work time.Duration
	// commit is the whole commit; rebalance, spill and write are bbolt's
	// parts of it (write: the pages, the meta page and their two
	// fdatasyncs); other is the rest: writing the freelist out, growing
	// the file (a truncate and an fsync) and remapping it (which waits
	// for every read transaction to end).
	commit, rebalance, spill, write time.Duration
	// nodes and pages are the tree pages the transaction changed and
	// the pages its commit allocated.
	nodes, pages int64
	// reads is how many read transactions were open when the commit
	// started: a remap waits for them all.
	reads int
	// grew is how much the file grew (bytes).
	grew int64
	// free is the freelist's size (pages) after the commit: all of it is
	// written by every commit outside a pass (BeginPass).
	free int
	// used is what the thread running the transaction spent meanwhile
	// (CPU, page faults), gcs the GC cycles that ended meanwhile: a
	// transaction that held the lock long with little CPU waited for a
	// CPU, a GC or the disk.
	used usage
	gcs  uint64
	// disk is what the index's disk did from before the write lock to
	// after the commit: another's I/O queued before the commit's flush
	// shows here.
	disk diskIO
	// by is the function that asked for the write (writer).
	by string
}

// diskIO is a reading of the index's disk's counters (diskStat): the
// requests it completed, and those in flight.
type diskIO struct {
	reads, writes, discards, flushes, inFlight uint64
	// ok is false where the counters are unknown.
	ok bool
}

// since is what the disk completed from d to e; in flight is d's.
func (e diskIO) since(d diskIO) diskIO {
	return diskIO{reads: e.reads - d.reads, writes: e.writes - d.writes, discards: e.discards - d.discards,
		flushes: e.flushes - d.flushes, inFlight: d.inFlight, ok: e.ok && d.ok}
}

// usage is a thread's CPU time (of it, in the kernel: system calls, page
// faults), page faults and the times the OS took its CPU from it
// (threadUsage).
type usage struct {
	cpu, sys               time.Duration
	minflt, majflt, nivcsw int64
}

func (u usage) sub(v usage) usage {
	return usage{cpu: u.cpu - v.cpu, sys: u.sys - v.sys, minflt: u.minflt - v.minflt, majflt: u.majflt - v.majflt, nivcsw: u.nivcsw - v.nivcsw}
}

// gcCycles is how many GC cycles have ended.
func gcCycles() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// held is how long the transaction held the write lock.
func (p commitPhases) held() time.Duration { return p.work + p.commit }

// other is the commit's time outside bbolt's measured parts.
func (p commitPhases) other() time.Duration {
	return max(0, p.commit-p.rebalance-p.spill-p.write)
}

// SetLogger sets where the index logs (write transactions that held the
// write lock over 100 ms, with where their time went); nil: nowhere.
func (ix *Index) SetLogger(l *slog.Logger) { ix.log.Store(l) }

// update runs fn in a write transaction given the index's write limits
// (stamped: stored.go), and returns how long the transaction held the
// write lock: from when fn starts (bbolt takes the lock before) to the
// lock's release in the commit, on the limits' clock. A transaction that
// held it over slowCommit is logged with its phases.
func (ix *Index) update(fn func(tx *bolt.Tx, b *budget) error) (held time.Duration, err error) {
	lim := ix.limits()
	var p commitPhases
	begin := time.Now()
	size := ix.fileSize()
	disk := ix.disk.read()
	// A region of the runtime's execution trace, from before the write
	// lock to its release: a trace (go tool trace, or the flight
	// recorder of the bench's BENCH_SCALE_TRACE) shows where a slow
	// write's goroutine waited (for a P, a CPU, a system call).
	region := trace.StartRegion(context.Background(), WriteRegion)
	tx, err := ix.db.Begin(true)
	if err != nil {
		region.End()
		return 0, err
	}
	ix.skipFreelist(tx)
	// On one thread, so that its CPU time is the transaction's.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	used, usedOK := threadUsage()
	gcs := gcCycles()
	start := lim.now()
	p.wait = time.Since(begin)
	// The first of the commit's handlers: bbolt runs them in order once
	// it has released the write lock, so the hold ends here and not after
	// the handlers the transaction's writes register (memos' forgets).
	var unlocked time.Time
	tx.OnCommit(func() {
		unlocked = lim.now()
		region.End()
	})
	committed := false
	defer func() {
		if !committed {
			// fn failed or panicked, or the commit panicked (bbolt on a
			// damaged page, recovered: RecoverDamaged): the write lock
			// is let go, or nothing could write or close the index.
			_ = tx.Rollback()
			region.End()
		}
	}()
	if err := fn(tx, &budget{lim: lim, tx: tx, start: start}); err != nil {
		return lim.now().Sub(start), err
	}
	if err := stampStored(tx); err != nil {
		return lim.now().Sub(start), err
	}
	p.work = lim.now().Sub(start)
	p.reads = ix.db.Stats().OpenTxN
	err = tx.Commit() // a failure rolls back
	committed = true
	if err != nil {
		region.End()
		unlocked = lim.now()
	}
	p.commit = unlocked.Sub(start) - p.work
	st := tx.Stats()
	p.rebalance, p.spill, p.write = st.GetRebalanceTime(), st.GetSpillTime(), st.GetWriteTime()
	p.nodes, p.pages = st.GetNodeCount(), st.GetPageCount()
	if u, ok := threadUsage(); ok && usedOK {
		p.used = u.sub(used)
	}
	if err == nil {
		ix.commits.Add(1)
		ix.pagesWritten.Add(p.pages)
		ix.held.Add(int64(p.held()))
		ix.heldCPU.Add(int64(p.used.cpu))
		ix.heldFaults.Add(p.used.minflt)
	}
	if p.held() > slowCommit {
		p.disk = ix.disk.read().since(disk)
		p.gcs = gcCycles() - gcs
		p.grew = ix.fileSize() - size
		p.free = ix.db.Stats().FreePageN
		p.by = writer()
		ix.logSlow(p, err)
	}
	return p.held(), err
}

// WriteTotals add up the index's committed write transactions (all but
// the batched ones of bbolt's Batch, a few keys each, which only Batches
// counts): the metrics of the index's writes, and what a pass wrote (the
// difference of two).
type WriteTotals struct {
	// Commits is how many committed.
	Commits int64
	// Batches is how many of bbolt's Batch transactions committed (each
	// the writes of one or more concurrent calls): with Commits, the
	// index's synced commits.
	Batches int64
	// Pages is how many pages their commits wrote: the pages each changed
	// and bbolt's freelist (BeginPass), not the meta page.
	Pages int64
	// Held is how long they held the write lock, in all.
	Held time.Duration
	// Slow is how many held it over 100 ms (each logged: SetLogger).
	Slow int64
	// CPU and Faults are what the threads running them spent meanwhile:
	// CPU time, and minor page faults (a fault of the index's mapping
	// under the write lock: see prefault). Zero where the platform does
	// not tell a thread's usage.
	CPU    time.Duration
	Faults int64
}

// WriteTotals returns the totals of the index's write transactions since
// it was opened.
func (ix *Index) WriteTotals() WriteTotals {
	return WriteTotals{Commits: ix.commits.Load(), Batches: ix.batches.Load(), Pages: ix.pagesWritten.Load(), Held: time.Duration(ix.held.Load()), Slow: ix.slowCommits.Load(),
		CPU: time.Duration(ix.heldCPU.Load()), Faults: ix.heldFaults.Load()}
}

// write runs fn in a write transaction, as update does (logged if slow),
// without limits: for writes of a few keys.
func (ix *Index) write(fn func(tx *bolt.Tx) error) error {
	_, err := ix.update(func(tx *bolt.Tx, _ *budget) error { return fn(tx) })
	return err
}

// writer names the function that asked for the write update is running
// ("storage.(*Index).flushPullTimes"): a slow write's log says which it
// was, since every kind of write waits for the same lock. Called only for
// a slow one (a stack walk).
func writer() string {
	pcs := make([]uintptr, 16)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs)])
	for {
		f, more := frames.Next()
		name := f.Function[strings.LastIndex(f.Function, "/")+1:]
		fn, _, _ := strings.Cut(name, ".func") // a closure: its function's
		switch fn {
		case "storage.(*Index).update", "storage.(*Index).write", "storage.(*Index).writeSome", "storage.(*Index).writeAll":
			// the helpers between a write's caller and update
		default:
			return name
		}
		if !more {
			return name
		}
	}
}

// logSlow logs a write transaction that held the write lock over
// slowCommit.
func (ix *Index) logSlow(p commitPhases, err error) {
	ix.slowCommits.Add(1)
	l := ix.log.Load()
	if l == nil {
		return
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }
	attrs := []slog.Attr{
		slog.String("by", p.by),
		slog.String("held", ms(p.held())), slog.String("work", ms(p.work)), slog.String("commit", ms(p.commit)),
		slog.String("rebalance", ms(p.rebalance)), slog.String("spill", ms(p.spill)),
		slog.String("write_and_sync", ms(p.write)), slog.String("other", ms(p.other())),
		slog.String("lock_wait", ms(p.wait)),
		slog.Int64("changed_pages", p.nodes), slog.Int64("allocated_pages", p.pages),
		slog.Int("free_pages", p.free), slog.Int64("file_grew_bytes", p.grew),
		slog.Int("open_read_transactions", p.reads),
		slog.String("cpu", ms(p.used.cpu)), slog.String("system_cpu", ms(p.used.sys)),
		slog.Int64("minor_faults", p.used.minflt), slog.Int64("major_faults", p.used.majflt),
		slog.Int64("involuntary_switches", p.used.nivcsw),
		slog.Uint64("gc_cycles", p.gcs),
	}
	if d := p.disk; d.ok {
		attrs = append(attrs, slog.Uint64("disk_reads", d.reads), slog.Uint64("disk_writes", d.writes),
			slog.Uint64("disk_discards", d.discards), slog.Uint64("disk_flushes", d.flushes),
			slog.Uint64("disk_in_flight", d.inFlight))
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	l.LogAttrs(context.Background(), slog.LevelWarn, "slow index write: it held the write lock over 100ms", attrs...)
}

// fileSize is the index file's size (0 if unknown).
func (ix *Index) fileSize() int64 {
	fi, err := os.Stat(ix.db.Path())
	if err != nil {
		return 0
	}
	return fi.Size()
}

// openOptions are the options the index at path is opened with.
//
// A commit that outgrows bbolt's mapping of the file remaps it, and the
// remap waits for every read transaction to end while holding the write
// lock (and, once it waits, new read transactions wait behind it): one
// long read, or many short ones in a row, stalls that commit and every
// pull with it. bbolt maps the file in doubling steps up to 1 GiB, then 1
// GiB more at a time, so an index near a step (at 100k images ~900 MB,
// just under 1 GiB) remaps as soon as a pass's commits grow it. Mapping
// twice the file at open, at least 1 GiB, leaves room for the index to
// double before a remap: the mapping is address space, not memory (pages
// are only resident once read, and the watcher in mapped.go bounds them).
//
// The freelist stays bbolt's default (a sorted array): its map form was
// slower on a commit with a large freelist (BenchmarkCommitLargeFreelist,
// ~90k free pages: 8.6 ms against 6.0 ms of CPU per commit of 256 puts).
func openOptions(path string) *bolt.Options {
	o := &bolt.Options{
		// Short: a start on an index another process holds must fail at once.
		Timeout: 500 * time.Millisecond,
	}
	if strconv.IntSize == 64 {
		var size int64
		if fi, err := os.Stat(path); err == nil {
			size = fi.Size()
		}
		o.InitialMmapSize = int(max(2*size, minMapped))
	}
	return o
}

// minMapped is the least the index maps at open (64-bit platforms).
const minMapped = 1 << 30

package storage

// OnGrow sets f to be called with the new stored size (StoredBytes) after
// every write that adds content to the index, e.g. to start an eviction
// once the store outgrows its limit. f runs on the writer's goroutine:
// it must not block. nil removes it.
func (ix *Index) OnGrow(f func(stored int64)) {
	if f == nil {
		ix.onGrow.Store(nil)
		return
	}
	ix.onGrow.Store(&f)
}

// grew adds n bytes to the stored size and tells OnGrow's function.
func (ix *Index) grew(n int64) {
	total := ix.stored.Add(n)
	if f := ix.onGrow.Load(); f != nil && n > 0 {
		(*f)(total)
	}
}

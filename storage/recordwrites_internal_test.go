package storage

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writesRule names a bucket whose records the package's code writes in
// one file only, because a memo must hear of every write (the fill
// records: fillwrites.go; the links: linkwrites.go).
type writesRule struct {
	// file is the one file that writes the records.
	file string
	// ident is the bucket's variable, literal its name as a Go string
	// literal (`"mirrors"`).
	ident, literal string
	// readers are the functions that may be handed the bucket: they read
	// it, write the shared copy of the records (another replica's store,
	// not the local index), or write it through the file's helpers.
	readers map[string]bool
}

// outside returns where the Go source src (file name name) names the
// rule's bucket other than to read it: in the rule's file anything goes;
// elsewhere the bucket may be declared, listed in a composite literal (a
// list of buckets, a map keyed by bucket), compared with in a switch's
// case, used as a map index, or passed to one of the readers; the
// bucket's name as a literal only where it is declared.
func (r writesRule) outside(t *testing.T, name, src string) []string {
	t.Helper()
	if filepath.Base(name) == r.file {
		return nil
	}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, name, src, 0)
	if err != nil {
		t.Fatal(err)
	}
	var bad []string
	var stack []ast.Node
	ast.Inspect(f, func(n ast.Node) bool {
		if n == nil {
			stack = stack[:len(stack)-1]
			return true
		}
		stack = append(stack, n)
		switch n := n.(type) {
		case *ast.BasicLit:
			if n.Kind == token.STRING && n.Value == r.literal && !r.declares(stack) {
				bad = append(bad, fset.Position(n.Pos()).String())
			}
		case *ast.Ident:
			if n.Name == r.ident && !r.readOnly(stack) {
				bad = append(bad, fset.Position(n.Pos()).String())
			}
		}
		return true
	})
	return bad
}

// declares reports whether the innermost node of stack lies in the
// declaration of the rule's bucket.
func (r writesRule) declares(stack []ast.Node) bool {
	for i := len(stack) - 1; i >= 0; i-- {
		if v, ok := stack[i].(*ast.ValueSpec); ok {
			return len(v.Names) == 1 && v.Names[0].Name == r.ident
		}
	}
	return false
}

// readOnly reports whether the use of the bucket at the top of stack is
// one outside allows.
func (r writesRule) readOnly(stack []ast.Node) bool {
	if r.declares(stack) {
		return true
	}
	i := len(stack) - 2
	child := stack[len(stack)-1]
	// string(bucket) stands for it.
	if c, ok := stack[i].(*ast.CallExpr); ok && len(c.Args) == 1 {
		if fn, ok := c.Fun.(*ast.Ident); ok && fn.Name == "string" {
			child, i = c, i-1
		}
	}
	switch p := stack[i].(type) {
	case *ast.CompositeLit, *ast.CaseClause:
		return true
	case *ast.KeyValueExpr:
		_, lit := stack[i-1].(*ast.CompositeLit)
		return lit && p.Key == child
	case *ast.IndexExpr:
		return p.Index == child
	case *ast.CallExpr:
		fn := p.Fun
		if ix, ok := fn.(*ast.IndexExpr); ok { // get[FillRecord]
			fn = ix.X
		}
		switch fn := fn.(type) {
		case *ast.Ident:
			return r.readers[fn.Name]
		case *ast.SelectorExpr:
			return r.readers[fn.Sel.Name]
		}
	}
	return false
}

// check fails t where the package's non-test files name the bucket
// outside the rule (with how to write and read the records, hint), and
// where the rule misses one of the bypasses or takes one of the reads
// for a write (Go declarations).
func (r writesRule) check(t *testing.T, hint string, bypasses, reads []string) {
	t.Helper()
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, at := range r.outside(t, name, string(src)) {
			t.Errorf("%s: %s is named outside %s: %s", at, r.ident, r.file, hint)
		}
		checked++
	}
	if checked < 10 {
		t.Fatalf("checked %d files: not the package's directory?", checked)
	}
	// The check itself: each bypass is found, and no read is.
	for _, src := range bypasses {
		if got := r.outside(t, "x.go", "package storage\n"+src); len(got) == 0 {
			t.Errorf("not found: %s", src)
		}
	}
	for _, src := range reads {
		if got := r.outside(t, "x.go", "package storage\n"+src); len(got) != 0 {
			t.Errorf("a read found as a write at %v: %s", got, src)
		}
	}
}

// Every write of a link goes through linkwrites.go (link, unlink), and
// unlink forgets the key in the link memo once committed: the package's
// code names the bucket nowhere else but to read it. A writer or a
// deletion that bypasses it fails this test.
func TestLinkRecordsWrittenOnlyHere(t *testing.T) {
	rule := writesRule{file: "linkwrites.go", ident: "bucketLinks", literal: `"links"`,
		readers: map[string]bool{
			"get": true, "viewShared": true, "lookup": true,
			"shareGet": true, "sharePut": true, "shareDelete": true,
			"adopt": true, // adoptTx writes a link with link
		}}
	rule.check(t, "add links with link, delete them with unlink (it forgets the key in the link memo once committed), read them with linkRecordsOf or a reading helper", []string{
		`func f(tx *bolt.Tx) error { return tx.Bucket(bucketLinks).Delete(k) }`,
		`func f(tx *bolt.Tx) error { b := tx.Bucket(bucketLinks); return b.Put(k, nil) }`,
		`func f(tx *bolt.Tx) error { return put(tx, bucketLinks, k, rec) }`,
		`func f(ix *Index, tx *bolt.Tx) error { return ix.deleteContent(tx, bucketLinks, k) }`,
		`func f(tx *bolt.Tx) error { return tx.Bucket([]byte("links")).Delete(k) }`,
		`func f(tx *bolt.Tx) error { return tx.Bucket([]byte(string(bucketLinks))).Delete(k) }`,
		`func f(tx *bolt.Tx) error { c := tx.Bucket(bucketLinks).Cursor(); c.First(); return c.Delete() }`,
	}, []string{
		`func f(ix *Index, tx *bolt.Tx) { _, done := ix.lookup(tx, bucketLinks, k); done() }`,
		`var l = [][]byte{bucketTags, bucketLinks}`,
		`func f(m map[string][][]byte) { m[string(bucketLinks)] = nil }`,
		`func f(b []byte) bool { switch string(b) { case string(bucketLinks): return true }; return false }`,
	})
}

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

// mirrorsReaders are the functions that may be handed bucketMirrors:
// they read the local index, or write the shared copy of the records
// (another replica's store), not the local one.
var mirrorsReaders = map[string]bool{
	"get": true, "viewShared": true, "readAllRel": true,
	"shareGet": true, "sharePut": true, "shareDelete": true,
}

// mirrorsOutsideHelper returns where the Go source src (file name name)
// names the fill records' bucket other than to read it: in fillwrites.go
// anything goes; elsewhere bucketMirrors may be declared, listed in a
// composite literal (a list of buckets, a map keyed by bucket), used as a
// map index, or passed to one of mirrorsReaders; the bucket's name as a
// literal only where it is declared.
func mirrorsOutsideHelper(t *testing.T, name, src string) []string {
	t.Helper()
	if filepath.Base(name) == "fillwrites.go" {
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
			if n.Kind == token.STRING && n.Value == `"mirrors"` && !declaresMirrors(stack) {
				bad = append(bad, fset.Position(n.Pos()).String())
			}
		case *ast.Ident:
			if n.Name == "bucketMirrors" && !mirrorsReadOnly(stack) {
				bad = append(bad, fset.Position(n.Pos()).String())
			}
		}
		return true
	})
	return bad
}

// declaresMirrors reports whether the innermost node of stack lies in
// the declaration of bucketMirrors.
func declaresMirrors(stack []ast.Node) bool {
	for i := len(stack) - 1; i >= 0; i-- {
		if v, ok := stack[i].(*ast.ValueSpec); ok {
			return len(v.Names) == 1 && v.Names[0].Name == "bucketMirrors"
		}
	}
	return false
}

// mirrorsReadOnly reports whether the use of bucketMirrors at the top of
// stack is one mirrorsOutsideHelper allows.
func mirrorsReadOnly(stack []ast.Node) bool {
	if declaresMirrors(stack) {
		return true
	}
	i := len(stack) - 2
	child := stack[len(stack)-1]
	// string(bucketMirrors) stands for it.
	if c, ok := stack[i].(*ast.CallExpr); ok && len(c.Args) == 1 {
		if fn, ok := c.Fun.(*ast.Ident); ok && fn.Name == "string" {
			child, i = c, i-1
		}
	}
	switch p := stack[i].(type) {
	case *ast.CompositeLit:
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
			return mirrorsReaders[fn.Name]
		case *ast.SelectorExpr:
			return mirrorsReaders[fn.Sel.Name]
		}
	}
	return false
}

// Every write of a fill record goes through fillWrites, which forgets
// its key in the memo of complete fills once committed: the package's
// code names the bucket nowhere else but to read it. A writer that
// bypasses it (tx.Bucket(bucketMirrors).Put, put(tx, bucketMirrors, ...),
// a bucket opened by its name) fails this test.
func TestFillRecordsWrittenOnlyHere(t *testing.T) {
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
		for _, at := range mirrorsOutsideHelper(t, name, string(src)) {
			t.Errorf("%s: the fill records' bucket is named outside fillwrites.go: write them with fillWrites (it forgets the key in the memo once committed), read them with fillRecordsOf or a reading helper", at)
		}
		checked++
	}
	if checked < 10 {
		t.Fatalf("checked %d files: not the package's directory?", checked)
	}
	// The check itself: each of these bypasses is found.
	for _, src := range []string{
		`func f(tx *bolt.Tx) error { return tx.Bucket(bucketMirrors).Put(k, v) }`,
		`func f(tx *bolt.Tx) error { b := tx.Bucket(bucketMirrors); return b.Delete(k) }`,
		`func f(tx *bolt.Tx) error { return put(tx, bucketMirrors, k, rec) }`,
		`func f(tx *bolt.Tx) error { return tx.Bucket([]byte("mirrors")).Delete(k) }`,
		`func f(tx *bolt.Tx) error { return tx.Bucket([]byte(string(bucketMirrors))).Delete(k) }`,
		`func f(tx *bolt.Tx) error { c := tx.Bucket(bucketMirrors).Cursor(); c.First(); return c.Delete() }`,
	} {
		if got := mirrorsOutsideHelper(t, "x.go", "package storage\n"+src); len(got) == 0 {
			t.Errorf("not found: %s", src)
		}
	}
	// And reads are not.
	for _, src := range []string{
		`func f(ix *Index) { _, _, _ = viewShared[FillRecord](ix, bucketMirrors, k) }`,
		`var l = [][]byte{bucketTags, bucketMirrors}`,
		`func f(m map[string][][]byte) { m[string(bucketMirrors)] = nil }`,
	} {
		if got := mirrorsOutsideHelper(t, "x.go", "package storage\n"+src); len(got) != 0 {
			t.Errorf("a read found as a write at %v: %s", got, src)
		}
	}
}

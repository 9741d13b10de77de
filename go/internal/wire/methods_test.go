package wire

import (
	"go/ast"
	"go/parser"
	"go/token"
	"slices"
	"strconv"
	"testing"
)

// Every Method this package declares is in all(), so the golden test sees
// it: a method added to a group file but not to its list would otherwise
// go unchecked.
func TestEveryDeclaredMethodIsListed(t *testing.T) {
	declared := declaredMethods(t)
	if len(declared) == 0 {
		t.Fatal("found no Method declarations: the scan is broken")
	}
	var listed []string
	for _, s := range all() {
		listed = append(listed, s.methodName())
	}
	slices.Sort(declared)
	slices.Sort(listed)
	if !slices.Equal(declared, listed) {
		t.Fatalf("declared %v\nlisted   %v", declared, listed)
	}
}

// declaredMethods finds each Method[P, R]{"name"} literal in the
// package's source files.
func declaredMethods(t *testing.T) []string {
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range pkgs["wire"].Files {
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.CompositeLit)
			if !ok {
				return true
			}
			ix, ok := lit.Type.(*ast.IndexListExpr)
			if !ok {
				return true
			}
			if id, ok := ix.X.(*ast.Ident); !ok || id.Name != "Method" || len(lit.Elts) != 1 {
				return true
			}
			if s, ok := lit.Elts[0].(*ast.BasicLit); ok && s.Kind == token.STRING {
				name, err := strconv.Unquote(s.Value)
				if err != nil {
					t.Fatal(err)
				}
				names = append(names, name)
			}
			return true
		})
	}
	return names
}

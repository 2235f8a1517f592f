package cudann_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"strings"
	"testing"
)

// quickStart is the fenced block after the marker in a README, without its
// import line.
func quickStart(t *testing.T, path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	i := strings.Index(text, "<!-- quickstart: go -->")
	if i < 0 {
		t.Fatalf("%s has no <!-- quickstart: go --> marker", path)
	}
	text = text[i:]
	start := strings.Index(text, "```go\n") + len("```go\n")
	end := strings.Index(text[start:], "```")
	var lines []string
	for _, line := range strings.Split(text[start:start+end], "\n") {
		if !strings.HasPrefix(line, "import ") && strings.TrimSpace(line) != "" {
			lines = append(lines, line)
		}
	}
	return strings.Join(lines, "\n")
}

// exampleBody is the body of func Example in example_test.go, dedented,
// without its Output comment.
func exampleBody(t *testing.T) string {
	fset := token.NewFileSet()
	src, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	f, err := parser.ParseFile(fset, "example_test.go", src, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range f.Decls {
		if fn, ok := d.(*ast.FuncDecl); ok && fn.Name.Name == "Example" {
			body := string(src[fset.Position(fn.Body.Lbrace).Offset+1 : fset.Position(fn.Body.Rbrace).Offset])
			var lines []string
			for _, line := range strings.Split(body, "\n") {
				line = strings.TrimPrefix(line, "\t")
				if strings.TrimSpace(line) != "" && !strings.HasPrefix(line, "// Output:") {
					lines = append(lines, line)
				}
			}
			return strings.Join(lines, "\n")
		}
	}
	t.Fatal("no func Example in example_test.go")
	return ""
}

// The quick starts of README.md and go/README.md are the body of Example,
// which `go test` runs and checks against its Output.
func TestReadmeQuickStart(t *testing.T) {
	want := exampleBody(t)
	for _, path := range []string{"../README.md", "README.md"} {
		got := quickStart(t, path)
		if got != want {
			t.Errorf("%s's Go quick start differs from func Example:\n--- README\n%s\n--- Example\n%s", path, got, want)
		}
		if n := strings.Count(got, "\n") + 2; n > 10 { // + the import line
			t.Errorf("%s's Go quick start has %d lines, more than 10", path, n)
		}
	}
}

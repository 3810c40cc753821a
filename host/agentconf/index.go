package agentconf

import (
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// index locates every key of a document: its path with array indices
// ("cluster[1].export[0].vm"), the line it is on and its value's kind. The
// decoder reports keys without indices; the checks of this package need
// the line of a key they refuse. Built from go-toml's AST parser, which
// keeps byte ranges.
type index struct {
	data    []byte
	nl      []int // offsets of '\n'
	entries []entry
	byPath  map[string]int // path -> entries index
	arrays  map[string]int // path of an array of tables -> elements so far
	syntax  error          // the parser's error, if the document is not TOML
}

type entry struct {
	path  string // with indices
	plain string // without: "cluster.export.vm"
	line  int
	kind  unstable.Kind
}

func buildIndex(data []byte) *index {
	ix := &index{data: data, byPath: map[string]int{}, arrays: map[string]int{}}
	for i, c := range data {
		if c == '\n' {
			ix.nl = append(ix.nl, i)
		}
	}
	var p unstable.Parser
	p.Reset(data)
	current := ""
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			parts, first := keyParts(e.Key())
			if len(parts) == 0 {
				continue
			}
			current = ix.header(parts, e.Kind == unstable.ArrayTable)
			ix.add(current, ix.lineOf(first, 0), e.Kind)
		case unstable.KeyValue:
			parts, first := keyParts(e.Key())
			ix.value(join(current, strings.Join(parts, ".")), e.Value(), ix.lineOf(first, 0))
		}
	}
	ix.syntax = p.Error()
	return ix
}

// header resolves a table header's key: each array of tables on the way
// means its last element; the last part of an [[array]] header is a new
// element.
func (ix *index) header(parts []string, array bool) string {
	p := ""
	for i, part := range parts {
		p = join(p, part)
		if array && i == len(parts)-1 {
			n := ix.arrays[p]
			ix.arrays[p] = n + 1
			p += "[" + strconv.Itoa(n) + "]"
		} else if n := ix.arrays[p]; n > 0 {
			p += "[" + strconv.Itoa(n-1) + "]"
		}
	}
	return p
}

// value records a value and, for arrays and inline tables, what is in it.
func (ix *index) value(path string, v *unstable.Node, line int) {
	if !v.Valid() {
		return
	}
	ix.add(path, line, v.Kind)
	switch v.Kind {
	case unstable.Array:
		n := 0
		it := v.Children()
		for it.Next() {
			c := it.Node()
			if c.Kind == unstable.Comment {
				continue
			}
			ix.value(path+"["+strconv.Itoa(n)+"]", c, ix.lineOf(c, line))
			n++
		}
		ix.arrays[path] = n
	case unstable.InlineTable:
		it := v.Children()
		for it.Next() {
			kv := it.Node()
			if kv.Kind != unstable.KeyValue {
				continue
			}
			parts, first := keyParts(kv.Key())
			ix.value(join(path, strings.Join(parts, ".")), kv.Value(), ix.lineOf(first, line))
		}
	}
}

func (ix *index) add(path string, line int, kind unstable.Kind) {
	if _, dup := ix.byPath[path]; dup {
		return // a redefinition: the decoder refuses it; keep the first
	}
	ix.byPath[path] = len(ix.entries)
	ix.entries = append(ix.entries, entry{path: path, plain: plain(path), line: line, kind: kind})
}

// lineOf is the line a node starts on, or def when it has no range.
func (ix *index) lineOf(n *unstable.Node, def int) int {
	if n == nil || n.Raw.Length == 0 {
		return def
	}
	return ix.lineAt(n.Raw.Offset)
}

func (ix *index) lineAt(off uint32) int {
	return sort.SearchInts(ix.nl, int(off)) + 1
}

// get returns the entry of a path.
func (ix *index) get(path string) (entry, bool) {
	i, ok := ix.byPath[path]
	if !ok {
		return entry{}, false
	}
	return ix.entries[i], true
}

// has reports whether the document sets path.
func (ix *index) has(path string) bool {
	_, ok := ix.byPath[path]
	return ok
}

// line returns the line of path, else of the closest enclosing table that
// the document names, else 1.
func (ix *index) line(path string) int {
	for {
		if e, ok := ix.get(path); ok {
			return e.line
		}
		i := strings.LastIndexAny(path, ".[")
		if i <= 0 {
			return 1
		}
		path = path[:i]
	}
}

// resolve finds the indexed path of a key the decoder reported without
// indices at row: the entry on that line, else the last one before it.
func (ix *index) resolve(key string, row int) (entry, bool) {
	best, found := entry{}, false
	for _, e := range ix.entries {
		if e.plain != key || e.line > row {
			continue
		}
		if !found || e.line >= best.line {
			best, found = e, true
		}
	}
	return best, found
}

// onLine returns the first key on a line.
func (ix *index) onLine(line int) (entry, bool) {
	for _, e := range ix.entries {
		if e.line == line {
			return e, true
		}
	}
	return entry{}, false
}

func keyParts(it unstable.Iterator) ([]string, *unstable.Node) {
	var parts []string
	var first *unstable.Node
	for it.Next() {
		if first == nil {
			first = it.Node()
		}
		parts = append(parts, string(it.Node().Data))
	}
	return parts, first
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "." + b
}

// plain drops the array indices of a path.
func plain(path string) string {
	if !strings.Contains(path, "[") {
		return path
	}
	var b strings.Builder
	depth := 0
	for _, c := range path {
		switch {
		case c == '[':
			depth++
		case c == ']' && depth > 0:
			depth--
		case depth == 0:
			b.WriteRune(c)
		}
	}
	return b.String()
}

// keyOnLine guesses the key of a line the parser could not read: the text
// before '=' (or a table header) under the table the line is in.
func (ix *index) keyOnLine(row int) string {
	if ix.data == nil || row < 1 || row > len(ix.nl)+1 {
		return ""
	}
	start := 0
	if row > 1 {
		start = ix.nl[row-2] + 1
	}
	end := len(ix.data)
	if row <= len(ix.nl) {
		end = ix.nl[row-1]
	}
	text := strings.TrimSpace(string(ix.data[start:end]))
	if strings.HasPrefix(text, "[") {
		return strings.Trim(text, "[] \t")
	}
	k, _, ok := strings.Cut(text, "=")
	k = strings.TrimSpace(k)
	if !ok || k == "" || strings.Trim(k, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") != "" {
		return ""
	}
	table := ""
	for _, e := range ix.entries {
		if e.line < row && (e.kind == unstable.Table || e.kind == unstable.ArrayTable) {
			table = e.path
		}
	}
	return join(table, k)
}

package agentconf

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// rawFile, rawCluster and rawExport are the file as TOML types: what the
// strict decoder fills. Pointers mark keys whose absence means a default
// other than the zero value. Integers are int64 so that range checks are
// this package's, with its messages.
type rawFile struct {
	StateDir    *string      `toml:"state_dir"`
	Control     *string      `toml:"control"`
	Metrics     string       `toml:"metrics"`
	KeepPlugged bool         `toml:"keep_plugged"`
	LogLevel    *string      `toml:"log_level"`
	Cluster     []rawCluster `toml:"cluster"`
}

type rawCluster struct {
	ID           *int64      `toml:"id"`
	Queues       *int64      `toml:"queues"`
	Mode         any         `toml:"mode"`
	Lossless     bool        `toml:"lossless"`
	Sources      []string    `toml:"sources"`
	QueueLen     *int64      `toml:"queue_len"`
	Buffers      int64       `toml:"buffers"`
	BufferSize   *int64      `toml:"buffer_size"`
	QueueBuffers int64       `toml:"queue_buffers"`
	Backing      string      `toml:"backing"`
	Hugetlbfs    string      `toml:"hugetlbfs"`
	Group        string      `toml:"group"`
	Shared       bool        `toml:"shared"`
	Ctl          bool        `toml:"ctl"`
	Doorbell     bool        `toml:"doorbell"`
	BPF          string      `toml:"bpf"`
	VMRecover    *string     `toml:"vm_recover"`
	Export       []rawExport `toml:"export"`
}

type rawExport struct {
	VM     string  `toml:"vm"`
	Queues []int64 `toml:"queues"`
}

// keySpec is one key of the schema: the table it belongs to, the TOML
// kinds it takes (elem: of an array's elements) and how to say so.
type keySpec struct {
	table string // "", "cluster", "cluster.export"
	name  string
	kinds []unstable.Kind
	elem  unstable.Kind // for arrays of scalars; Invalid: no check
	want  string
}

var (
	kString  = []unstable.Kind{unstable.String}
	kInt     = []unstable.Kind{unstable.Integer}
	kBool    = []unstable.Kind{unstable.Bool}
	kArray   = []unstable.Kind{unstable.Array}
	kTables  = []unstable.Kind{unstable.ArrayTable, unstable.Array}
	kModeAny = []unstable.Kind{unstable.String, unstable.Integer}
)

// schema lists every key in the order Help documents them. The decoder's
// struct tags above must name the same keys (TestSchemaMatchesStructs).
var schema = []keySpec{
	{"", "state_dir", kString, 0, "a directory path (string)"},
	{"", "control", kString, 0, "a socket path (string)"},
	{"", "metrics", kString, 0, `a "host:port" string ("" for none)`},
	{"", "keep_plugged", kBool, 0, "true or false"},
	{"", "log_level", kString, 0, "a string: trace, debug, info, warn, error or off"},
	{"", "cluster", kTables, 0, "[[cluster]] tables"},
	{"cluster", "id", kInt, 0, "an integer cluster id"},
	{"cluster", "queues", kInt, 0, "an integer number of queues"},
	{"cluster", "mode", kModeAny, 0, "a mode name or 0..4"},
	{"cluster", "lossless", kBool, 0, "true or false"},
	{"cluster", "sources", kArray, unstable.String, "an array of source strings"},
	{"cluster", "queue_len", kInt, 0, "an integer (packets, a power of two)"},
	{"cluster", "buffers", kInt, 0, "an integer (0: computed)"},
	{"cluster", "buffer_size", kInt, 0, "an integer (bytes, a power of two)"},
	{"cluster", "queue_buffers", kInt, 0, "an integer"},
	{"cluster", "backing", kString, 0, "a string: auto, shm, hugetlbfs or memfd"},
	{"cluster", "hugetlbfs", kString, 0, "a directory path (string)"},
	{"cluster", "group", kString, 0, "a group name or id (string)"},
	{"cluster", "shared", kBool, 0, "true or false"},
	{"cluster", "ctl", kBool, 0, "true or false"},
	{"cluster", "doorbell", kBool, 0, "true or false"},
	{"cluster", "bpf", kString, 0, "a string (tcpdump -ddd output)"},
	{"cluster", "vm_recover", kString, 0, `a duration string such as "10s" ("0": never)`},
	{"cluster", "export", kTables, 0, "[[cluster.export]] tables"},
	{"cluster.export", "vm", kString, 0, `a QMP socket path or "libvirt:DOMAIN" (string)`},
	{"cluster.export", "queues", kArray, unstable.Integer, "an array of queue numbers"},
}

var schemaByKey = func() map[string]*keySpec {
	m := make(map[string]*keySpec, len(schema))
	for i := range schema {
		m[join(schema[i].table, schema[i].name)] = &schema[i]
	}
	return m
}()

// tableKeys lists the keys a table takes, for an unknown key's message.
func tableKeys(table string) string {
	var names []string
	for _, k := range schema {
		if k.table == table {
			names = append(names, k.name)
		}
	}
	return strings.Join(names, ", ")
}

func (k *keySpec) accepts(kind unstable.Kind) bool {
	for _, c := range k.kinds {
		if c == kind {
			return true
		}
	}
	return false
}

// kindName names a TOML kind for "want X, not Y".
func kindName(k unstable.Kind) string {
	switch k {
	case unstable.String:
		return "a string"
	case unstable.Integer:
		return "an integer"
	case unstable.Float:
		return "a float"
	case unstable.Bool:
		return "a boolean"
	case unstable.Array:
		return "an array"
	case unstable.InlineTable, unstable.Table:
		return "a table"
	case unstable.ArrayTable:
		return "an array of tables"
	case unstable.LocalDate, unstable.LocalTime, unstable.LocalDateTime, unstable.DateTime:
		return "a date or time"
	}
	return "a " + strings.ToLower(k.String())
}

func decode(data []byte, raw *rawFile) error {
	return toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields().Decode(raw)
}

// decodeError turns the decoder's error into an *Error with the key's
// indexed path.
func (ix *index) decodeError(name string, err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) && len(strict.Errors) > 0 {
		de := &strict.Errors[0]
		row, _ := de.Position()
		key := strings.Join(de.Key(), ".")
		path := key
		if e, ok := ix.resolve(key, row); ok {
			path = e.path
		}
		table, _ := splitKey(plain(key))
		msg := "unknown key"
		if _, known := tableSpec(table); known {
			where := "the top level"
			if table != "" {
				where = "[[" + table + "]]"
			}
			msg = fmt.Sprintf("unknown key (%s takes %s)", where, tableKeys(table))
		}
		return &Error{File: name, Line: row, Key: path, Err: kindErrorf(ErrUnknownKey, "%s", msg)}
	}
	var de *toml.DecodeError
	if !errors.As(err, &de) {
		return &Error{File: name, Line: 1, Err: kindErrorf(ErrSyntax, "%v", err)}
	}
	row, _ := de.Position()
	msg := strings.TrimPrefix(de.Error(), "toml: ")
	key := strings.Join(de.Key(), ".")
	if ix.syntax != nil || key == "" {
		path := key
		if e, ok := ix.resolve(key, row); ok && key != "" {
			path = e.path
		} else if e, ok := ix.onLine(row); ok {
			path = e.path
		} else {
			path = ix.keyOnLine(row)
		}
		return &Error{File: name, Line: row, Key: path, Err: kindErrorf(ErrSyntax, "%s", msg)}
	}
	e, found := ix.resolve(key, row)
	if !found {
		return &Error{File: name, Line: row, Key: key, Err: kindErrorf(ErrSyntax, "%s", msg)}
	}
	if spec := schemaByKey[key]; spec != nil {
		if !spec.accepts(e.kind) {
			return &Error{File: name, Line: row, Key: e.path,
				Err: kindErrorf(ErrType, "want %s, not %s", spec.want, kindName(e.kind))}
		}
		if spec.elem != unstable.Invalid && e.kind == unstable.Array {
			for i := 0; ; i++ {
				el, ok := ix.get(e.path + "[" + strconv.Itoa(i) + "]")
				if !ok {
					break
				}
				if el.kind != spec.elem {
					return &Error{File: name, Line: el.line, Key: e.path,
						Err: kindErrorf(ErrType, "want %s; element %d is %s", spec.want, i, kindName(el.kind))}
				}
			}
		}
	}
	// Valid TOML the decoder still refuses (a key defined twice, a table
	// redefined): the document's structure.
	return &Error{File: name, Line: row, Key: e.path, Err: kindErrorf(ErrSyntax, "%s", msg)}
}

// splitKey splits "cluster.export.vm" into its table and name.
func splitKey(key string) (table, name string) {
	i := strings.LastIndexByte(key, '.')
	if i < 0 {
		return "", key
	}
	return key[:i], key[i+1:]
}

// tableSpec reports whether a table path is one the schema has.
func tableSpec(table string) (*keySpec, bool) {
	if table == "" {
		return nil, true
	}
	k := schemaByKey[table]
	return k, k != nil && k.want[0] == '['
}

// checkKinds checks the kind of every key the schema knows, for what the
// decoder lets through: a [cluster] table where [[cluster]] tables are
// wanted decodes as one element. Array elements were checked by the
// decoder.
func (ix *index) checkKinds(name string) error {
	for _, e := range ix.entries {
		spec := schemaByKey[e.plain]
		if spec == nil || strings.HasSuffix(e.path, "]") || spec.accepts(e.kind) {
			continue
		}
		return &Error{File: name, Line: e.line, Key: e.path,
			Err: kindErrorf(ErrType, "want %s, not %s", spec.want, kindName(e.kind))}
	}
	return nil
}

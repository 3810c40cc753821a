package vmtest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

type buildResult struct {
	bin []byte
	err error
}

var (
	buildMu    sync.Mutex
	buildCache = map[string]*buildResult{}
)

// BuildGo builds the Go package pkg (an import path or a path relative to
// the test's directory) as a static linux/amd64 binary with CGO_ENABLED=0
// and returns its bytes. Each package is built once per test process; the
// go build cache makes later processes fast too. A failed build fails the
// test.
func BuildGo(t testing.TB, pkg string) []byte {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	r, ok := buildCache[pkg]
	if !ok {
		r = &buildResult{}
		r.bin, r.err = goBuild(pkg)
		buildCache[pkg] = r
	}
	if r.err != nil {
		t.Fatalf("vmtest: %v", r.err)
	}
	return r.bin
}

func goBuild(pkg string) ([]byte, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("build %s: no go command on PATH: %w", pkg, err)
	}
	dir, err := os.MkdirTemp("", "vmtest-build-")
	if err != nil {
		return nil, fmt.Errorf("build %s: %w", pkg, err)
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "bin")
	cmd := exec.Command(goBin, "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go build %s: %w: %s", pkg, err, bytes.TrimSpace(stderr.Bytes()))
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("build %s: %w", pkg, err)
	}
	return b, nil
}

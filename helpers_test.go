package zc

import (
	"os"
	"testing"
)

// shmDir points ZC_DIR at a fresh folder on /dev/shm (tmpfs) for the test.
func shmDir(t testing.TB) string {
	t.Helper()
	base := "/dev/shm"
	if _, err := os.Stat(base); err != nil {
		base = ""
	}
	d, err := os.MkdirTemp(base, "zctest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	os.Setenv("ZC_DIR", d)
	t.Cleanup(func() { os.Unsetenv("ZC_DIR") })
	return d
}

func newCluster(t testing.TB, cfg Config) *Cluster {
	t.Helper()
	shmDir(t)
	if cfg.Backing == BackingAuto {
		cfg.Backing = BackingShm
	}
	c, err := CreateCluster(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// newPair creates a cluster with cfg and attaches both ends of its queue
// 0 (closed at the end of the test).
func newPair(t testing.TB, cfg Config) (c *Cluster, prod, cons *Queue) {
	t.Helper()
	c = newCluster(t, cfg)
	must := mustQ(t)
	return c, must(c.Producer(0)), must(c.Consumer(0))
}

func mustQ(t testing.TB) func(*Queue, error) *Queue {
	return func(q *Queue, err error) *Queue {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { q.Close() })
		return q
	}
}

package vmtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// ErrExited means QEMU exited before the console showed what was expected.
var ErrExited = errors.New("vmtest: guest exited")

// Line is one line of guest console output and when the host read it.
type Line struct {
	Text string
	Time time.Time
}

// console keeps every line the guest printed. Expectations consume lines:
// each search starts after the line the previous one matched.
type console struct {
	mu     sync.Mutex
	lines  []Line
	next   int           // first line not yet consumed
	notify chan struct{} // closed and replaced when a line arrives
	closed bool
}

func newConsole() *console { return &console{notify: make(chan struct{})} }

// read copies r into the console line by line, calling log for each, until
// r ends.
func (c *console) read(r io.Reader, log func(string)) {
	br := bufio.NewReader(r)
	for {
		s, err := br.ReadString('\n')
		if s != "" {
			s = strings.TrimRight(s, "\r\n")
			log(s)
			c.mu.Lock()
			c.lines = append(c.lines, Line{Text: s, Time: time.Now()})
			close(c.notify)
			c.notify = make(chan struct{})
			c.mu.Unlock()
		}
		if err != nil {
			c.mu.Lock()
			c.closed = true
			close(c.notify)
			c.mu.Unlock()
			return
		}
	}
}

// expect waits for the next line that match accepts and consumes up to it.
func (c *console) expect(ctx context.Context, what string, match func(string) bool) (Line, error) {
	for {
		c.mu.Lock()
		for i := c.next; i < len(c.lines); i++ {
			if match(c.lines[i].Text) {
				c.next = i + 1
				l := c.lines[i]
				c.mu.Unlock()
				return l, nil
			}
		}
		closed, ch := c.closed, c.notify
		c.mu.Unlock()
		if closed {
			return Line{}, fmt.Errorf("waiting for %s: %w; last console lines:\n%s", what, ErrExited, c.tail(10))
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return Line{}, fmt.Errorf("vmtest: waiting for %s: %w; last console lines:\n%s", what, ctx.Err(), c.tail(10))
		}
	}
}

// tail returns the last n lines, for error messages.
func (c *console) tail(n int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	start := max(0, len(c.lines)-n)
	var b strings.Builder
	for _, l := range c.lines[start:] {
		b.WriteString("\t" + l.Text + "\n")
	}
	return b.String()
}

// all returns a copy of every console line so far.
func (c *console) all() []Line {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Line(nil), c.lines...)
}

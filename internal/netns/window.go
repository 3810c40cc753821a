package netns

import (
	"errors"
	"net"
	"sync/atomic"
	"time"
)

// SendWindow sends test frames 0 to total-1 (AppendFrame, FrameLen(seq,
// 1400) bytes each) from src to dst through r, on a goroutine of its own,
// keeping at most window frames ahead of received, which the caller's
// receiver advances, so that nothing is lost for want of room. The channel
// reports once: nil when every frame went, or the send error, or an error
// when the receiver made no room for guard.
func (r *Raw) SendWindow(dst, src net.HardwareAddr, total, window int, received *atomic.Int64, guard time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		var buf []byte
		deadline := time.Now().Add(guard)
		for seq := uint32(0); seq < uint32(total); seq++ {
			for int64(seq)-received.Load() >= int64(window) {
				if time.Now().After(deadline) {
					done <- errors.New("netns: receiver stalled")
					return
				}
				time.Sleep(50 * time.Microsecond)
			}
			buf = AppendFrame(buf[:0], dst, src, seq, FrameLen(seq, 1400))
			if err := r.Send(buf); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	return done
}

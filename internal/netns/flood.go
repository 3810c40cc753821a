package netns

import (
	"net"
	"sync/atomic"
)

// Burst is something that sends a burst of frames and says how many it
// queued, like afpacket's TX.Send.
type Burst interface {
	Send(frames [][]byte) (int, error)
}

// Flood sends 64 copies of test frames of size n from src to dst through
// tx in a loop on a new goroutine until stop is closed, then sends nil (or the send error that ended it
// early) on done.
func Flood(tx Burst, dst, src net.HardwareAddr, n int, sent *atomic.Int64, stop <-chan struct{}, done chan<- error) {
	frames := make([][]byte, 64)
	for i := range frames {
		frames[i] = AppendFrame(nil, dst, src, uint32(i), n)
	}
	go func() {
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			k, err := tx.Send(frames)
			if err != nil {
				done <- err
				return
			}
			sent.Add(int64(k))
		}
	}()
}

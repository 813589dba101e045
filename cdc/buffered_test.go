package cdc

import (
	"math/rand/v2"
	"testing"
)

// buffered keeps a running count of the changes in the channel: it must
// always equal the sum over the values this session sent that are still
// in it, whatever the interleaving of sends and takes, also with values
// of an earlier session still in the channel.
func TestSessionBuffered(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, leftover := range []int{0, 3} {
		s := &Stream{txs: make(chan *Tx, 8)}
		for range leftover { // an earlier session's values
			s.txs <- &Tx{Changes: make([]Change, 1000)}
		}
		ss := &session{s: s, sizes: make([]int, cap(s.txs))}
		var inChannel []int // this session's values, in order; -1 for the earlier session's
		for range leftover {
			inChannel = append(inChannel, -1)
		}
		for step := range 5000 {
			if len(s.txs) < cap(s.txs) && rng.IntN(2) == 0 {
				n := rng.IntN(50)
				tx := &Tx{Changes: make([]Change, n)}
				s.txs <- tx
				if err := ss.sent(tx); err != nil {
					t.Fatal(err)
				}
				inChannel = append(inChannel, n)
			} else if len(s.txs) > 0 {
				<-s.txs
				inChannel = inChannel[1:]
			}
			want := 0
			for _, n := range inChannel {
				want += max(n, 0)
			}
			if got := ss.buffered(); got != want {
				t.Fatalf("leftover %d, step %d: buffered() = %d, want %d", leftover, step, got, want)
			}
		}
	}
}

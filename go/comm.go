package cudann

/*
#include "cudann.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// Communicators for data-parallel training: every rank (a process per GPU, or
// a goroutine locked to its OS thread per GPU) runs the same step on its share
// of the batch, then averages its gradients with the others' (Comm.AllReduce
// with Avg). More than one rank runs on NCCL; one rank needs nothing and its
// collectives are exact copies, so a program written for N ranks runs
// unchanged as one, on any backend.

// CommIDBytes is the size of a communicator id (CUDANN_COMM_ID_BYTES).
const CommIDBytes = C.CUDANN_COMM_ID_BYTES

// Op is an operation of Comm.AllReduce (CUDANN_SUM, CUDANN_AVG).
type Op int

// The all-reduce operations: the sum, or the mean, over the ranks.
const (
	Sum Op = C.CUDANN_SUM
	Avg Op = C.CUDANN_AVG
)

func (o Op) String() string {
	switch o {
	case Sum:
		return "Sum"
	case Avg:
		return "Avg"
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// NewCommID makes a new communicator id (cudann_comm_id, CommIDBytes bytes):
// rank 0 makes it and hands the bytes to the other ranks (a file, a pipe).
// It is NCCL's where NCCL and a GPU are usable; elsewhere an id good for a
// one-rank communicator only.
func NewCommID() ([]byte, error) {
	id := make([]byte, CommIDBytes)
	err := call(func() C.int32_t { return C.cudann_comm_id(unsafe.Pointer(&id[0])) })
	if err != nil {
		return nil, err
	}
	return id, nil
}

// Comm is a communicator from NewComm: one rank of a group that reduces and
// broadcasts float32 tensors together. Close destroys it.
type Comm struct {
	h            unsafe.Pointer
	nranks, rank int
}

// NewComm joins communicator id (from NewCommID on rank 0) as rank rank of
// nranks (cudann_comm_init), on the calling OS thread's current device (lock
// the goroutine to its thread after SetDevice). It blocks until every rank
// has joined. An id of nil (or empty) is a fresh one, for one rank; any other
// id must have CommIDBytes bytes. One rank needs no NCCL and no GPU; more
// need the GPU backend and NCCL (libnccl.so.2), else an *Error with the
// library's message.
func NewComm(nranks, rank int, id []byte) (*Comm, error) {
	c := newChecker("NewComm", nil)
	n, r := c.param("nranks", nranks), c.param("rank", rank)
	if len(id) == 0 && c.err == nil {
		var err error
		if id, err = NewCommID(); err != nil {
			return nil, err
		}
	} else if len(id) != CommIDBytes {
		c.fail("id has %d bytes, want %d (from NewCommID)", len(id), CommIDBytes)
	}
	var h unsafe.Pointer
	if err := c.run(func(unsafe.Pointer) C.int32_t { return C.cudann_comm_init(&h, n, r, unsafe.Pointer(&id[0])) }); err != nil {
		return nil, err
	}
	return &Comm{h: h, nranks: nranks, rank: rank}, nil
}

// NRanks is the number of ranks of the communicator.
func (c *Comm) NRanks() int { return c.nranks }

// Rank is this communicator's rank, in [0, NRanks()).
func (c *Comm) Rank() int { return c.rank }

// Close destroys the communicator (cudann_comm_destroy, after the work
// enqueued with it). Closing it again is an error.
func (c *Comm) Close() error {
	if c.h == nil {
		return &Error{Code: InvalidValue, Msg: "cudann.Comm.Close: the communicator is closed"}
	}
	h := c.h
	if err := call(func() C.int32_t { return C.cudann_comm_destroy(h) }); err != nil {
		return err
	}
	c.h = nil
	return nil
}

// AllReduce writes the sum (Sum) or the mean (Avg) of send over the ranks
// into recv (cudann_all_reduce). send and recv are float32 tensors, []float32
// or *Buffer, of the same length (send's); recv may be send (in place). With
// one rank it is an exact copy on any memory; with NCCL both must be library
// memory of the communicator's GPU. Every rank calls it with the same length
// and op. An op other than Sum and Avg is the library's to refuse.
func (c *Comm) AllReduce(send, recv any, op Op, stream ...*Stream) error {
	k := c.checker("Comm.AllReduce", stream)
	send, recv = k.float32Arg("send", send), k.float32Arg("recv", recv)
	n := length(send, 4)
	ps, pr := k.f32("send", send, n), k.f32("recv", recv, n)
	o, h := k.param("op", int(op)), c.h
	return k.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_all_reduce(ps, pr, C.int64_t(n), o, h, s)
	})
}

// Broadcast copies rank root's send into every rank's recv
// (cudann_broadcast). The length is recv's; send ([]float32 or *Buffer, as
// recv) must have as many elements on the root and is not read elsewhere
// (other ranks may pass nil). recv may be send (in place). Buffers and one
// rank as AllReduce.
func (c *Comm) Broadcast(send, recv any, root int, stream ...*Stream) error {
	k := c.checker("Comm.Broadcast", stream)
	send, recv = k.float32Arg("send", send), k.float32Arg("recv", recv)
	n := length(recv, 4)
	ps, pr := k.optF32("send", send, n), k.f32("recv", recv, n)
	r, h := k.param("root", root), c.h
	return k.run(func(s unsafe.Pointer) C.int32_t {
		return C.cudann_broadcast(ps, pr, C.int64_t(n), r, h, s)
	})
}

// checker is the checker of one collective, refusing a closed communicator.
func (c *Comm) checker(fn string, stream []*Stream) *checker {
	k := newChecker(fn, stream)
	if c.h == nil {
		k.fail("the communicator is closed")
	}
	return k
}

// float32Arg is x as a float32 tensor: a []float32 or a *Buffer; nil is an
// empty slice (no tensor). Anything else is refused.
func (c *checker) float32Arg(name string, x any) any {
	switch x.(type) {
	case nil:
		return []float32(nil)
	case []float32, *Buffer:
		return x
	}
	c.fail("%s is a %T, want a []float32 or a *cudann.Buffer", name, x)
	return []float32(nil)
}

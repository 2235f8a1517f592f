package cudann_test

import (
	"errors"
	"fmt"
	"log"

	cudann "github.com/cudann/cudann/go"
)

// The quick start of README.md (readme_test.go checks that they match).
func Example() {
	x := []float32{-1, 0, 1, 2}
	y := make([]float32, len(x))
	if err := cudann.Silu(x, y); err != nil {
		log.Fatal(err) // a *cudann.Error: the code and the library's message
	}
	fmt.Printf("%.4f\n", y) // [-0.2689 0.0000 0.7311 1.7616]
	// Output: [-0.2689 0.0000 0.7311 1.7616]
}

func ExampleSilu() {
	x := []float32{-2, -1, 0, 1, 2}
	if err := cudann.Silu(x, x); err != nil { // in place
		log.Fatal(err)
	}
	fmt.Printf("%.4f\n", x)
	// Output: [-0.2384 -0.2689 0.0000 0.7311 1.7616]
}

func ExampleSoftmax() {
	x := []float32{0, 0, 1, 2, 3, 4}
	y := make([]float32, len(x))
	if err := cudann.Softmax(x, y, 2, 3); err != nil { // two rows of three
		log.Fatal(err)
	}
	fmt.Printf("%.4f\n", y)
	// Output: [0.2119 0.2119 0.5761 0.0900 0.2447 0.6652]
}

func ExampleGemm() {
	a := []float32{1, 2, 3, 4, 5, 6} // 2x3
	b := []float32{1, 0, 0, 1, 1, 1} // 3x2
	c := make([]float32, 4)          // 2x2
	if err := cudann.Gemm(a, b, c, 2, 2, 3, 1, 0); err != nil {
		log.Fatal(err)
	}
	fmt.Println(c)
	// Output: [4 5 10 11]
}

// Library memory: device memory on a GPU, host memory on the CPU backend;
// the same program runs on both.
func ExampleMalloc() {
	x := []float32{-1, 0, 1, 2}
	buf, err := cudann.Malloc(int64(4 * len(x)))
	if err != nil {
		log.Fatal(err)
	}
	defer buf.Close()
	stream, err := cudann.NewStream()
	if err != nil {
		log.Fatal(err)
	}
	defer stream.Close()
	if err := buf.Upload(x, stream); err != nil {
		log.Fatal(err)
	}
	if err := cudann.Silu(buf, buf, stream); err != nil { // enqueued on the stream
		log.Fatal(err)
	}
	if err := stream.Synchronize(); err != nil {
		log.Fatal(err)
	}
	y := make([]float32, len(x))
	if err := buf.Download(y); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%.4f\n", y)
	// Output: [-0.2689 0.0000 0.7311 1.7616]
}

// Errors carry the code and the message: from this package for wrong
// lengths, from cudann_last_error() for what the library refuses.
func ExampleError() {
	logits := []float32{0.5, 2, 1, 0}
	out := make([]int32, 1)
	err := cudann.TopKSample(logits, out, []uint64{7}, 1, 4, 0, 1)
	var e *cudann.Error
	if errors.As(err, &e) {
		fmt.Println(e.Code, errors.Is(err, cudann.ErrInvalidValue))
		fmt.Println(e.Msg)
	}
	err = cudann.TopKSample(logits, out, []uint64{7}, 2, 4, 1, 1)
	fmt.Println(err)
	// Output:
	// CUDANN_INVALID_VALUE true
	// cuda_topk_sample: k must be >= 1 (got 0)
	// cudann.TopKSample: logits has 4 elements, want 8 (CUDANN_INVALID_VALUE)
}

// Data-parallel training: every rank averages its gradients with the others'
// before the optimizer step. Rank 0 makes the id and hands it to the other
// ranks; a communicator of one rank needs neither NCCL nor a GPU, and its
// collectives are exact copies, so the same program runs as one rank anywhere.
func ExampleNewComm() {
	id, err := cudann.NewCommID() // on rank 0; sent to the others
	if err != nil {
		log.Fatal(err)
	}
	comm, err := cudann.NewComm(1, 0, id) // nranks, rank
	if err != nil {
		log.Fatal(err)
	}
	defer comm.Close()
	grads := []float32{0.5, -1, 2}
	if err := comm.AllReduce(grads, grads, cudann.Avg); err != nil { // in place
		log.Fatal(err)
	}
	fmt.Println(grads)
	// Output: [0.5 -1 2]
}

package oldstyle

import (
	"testing"

	"github.com/cudann/cudann/go/internal/ref"
)

func TestSilu(t *testing.T) {
	x := ref.Rand(1, 4097, 8)
	y := make([]float32, len(x))
	if rc := Silu(x, y, int64(len(x))); rc != 0 {
		t.Fatalf("cuda_silu returned %d", rc)
	}
	if err := ref.Close(y, ref.Silu(x), nil, 5e-7); err != nil {
		t.Error(err)
	}
	if rc := Silu(x, y, -1); rc != -2 {
		t.Errorf("cuda_silu(n=-1) returned %d, want -2", rc)
	}
}

func TestScaleArgumentOrder(t *testing.T) {
	x := ref.Rand(2, 33, 1)
	y := make([]float32, len(x))
	if rc := Scale(x, y, -3, int64(len(x))); rc != 0 { // (input, output, scale, n)
		t.Fatalf("cuda_scale returned %d", rc)
	}
	want := make([]float64, len(x))
	for i, v := range x {
		want[i] = -3 * float64(v)
	}
	if err := ref.Close(y, want, nil, 6e-8); err != nil {
		t.Error(err)
	}
}

func TestGemm(t *testing.T) {
	m, n, k := 31, 33, 17
	a, b, c := ref.Rand(3, m*k, 1), ref.Rand(4, k*n, 1), ref.Rand(5, m*n, 1)
	want, bound := ref.Gemm(a, b, c, m, n, k, 1.5, 0.5)
	if rc := Gemm(a, b, c, m, n, k, 1.5, 0.5); rc != 0 {
		t.Fatalf("cuda_gemm returned %d", rc)
	}
	if err := ref.Close(c, want, bound, 1e-5); err != nil {
		t.Error(err)
	}
}

func TestArgmax(t *testing.T) {
	x := ref.Rand(6, 3*1000, 1)
	out := make([]int32, 3)
	if rc := Argmax(x, out, 3, 1000); rc != 0 {
		t.Fatalf("cuda_argmax returned %d", rc)
	}
	for r := range out {
		if want := ref.Argmax(x[r*1000 : (r+1)*1000]); out[r] != want {
			t.Errorf("row %d: %d, want %d", r, out[r], want)
		}
	}
}

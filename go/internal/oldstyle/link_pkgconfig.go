//go:build !cudann_nopkgconfig

package oldstyle

// The installed library: cflags and libs from cudann.pc.

// #cgo pkg-config: cudann
import "C"

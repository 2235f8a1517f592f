//go:build cudann_nopkgconfig

package oldstyle

// An uninstalled build tree: the include directory comes from CGO_CFLAGS
// (-I.../include) and the library directory from CGO_LDFLAGS (-L.../target/release,
// plus -Wl,-rpath,... to run without LD_LIBRARY_PATH). See README.md.

// #cgo LDFLAGS: -lcudann
import "C"

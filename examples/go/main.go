// pull_and_expose in Go, over the C ABI (librgtp.so) with cgo.
//
// Exposes a temporary file on 127.0.0.1, pulls it back, checks the bytes, and
// checks that a wrong key gives RGTP_E_KEY_MISMATCH.
//
//	cargo build --release -p rgtp-capi
//	cd examples/go && CGO_LDFLAGS="-L$LIBDIR -Wl,-rpath,$LIBDIR" go run .
//
// (LIBDIR: where librgtp.so is, e.g. ../../target/release.)
package main

/*
#cgo CFLAGS: -I${SRCDIR}/../../core/capi/include
#cgo LDFLAGS: -lrgtp
#include <stdlib.h>
#include <rgtp.h>
*/
import "C"

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"
)

// rgtpError is a failed call: its status code and message.
type rgtpError struct {
	code int
	msg  string
}

func (e *rgtpError) Error() string {
	return fmt.Sprintf("%s (%d): %s", C.GoString(C.rgtp_status_name(C.int(e.code))), e.code, e.msg)
}

func check(rc C.int, errBuf []byte) error {
	if rc == C.RGTP_OK {
		return nil
	}
	n := bytes.IndexByte(errBuf, 0)
	if n < 0 {
		n = len(errBuf)
	}
	return &rgtpError{int(rc), string(errBuf[:n])}
}

// Exposer wraps an rgtp_exposer handle.
type Exposer struct{ h *C.rgtp_exposer }

// Expose serves path on bind:port (0: ephemeral) until Close.
func Expose(path, bind string, port uint16, keyPath, cacheDir string) (*Exposer, error) {
	cPath, cBind := C.CString(path), C.CString(bind)
	cKey, cCache := C.CString(keyPath), C.CString(cacheDir)
	defer C.free(unsafe.Pointer(cPath))
	defer C.free(unsafe.Pointer(cBind))
	defer C.free(unsafe.Pointer(cKey))
	defer C.free(unsafe.Pointer(cCache))
	opts := C.rgtp_expose_options{key_path: cKey, cache_dir: cCache}
	errBuf := make([]byte, 512)
	var h *C.rgtp_exposer
	rc := C.rgtp_expose_start(cPath, cBind, C.uint16_t(port), &opts, &h,
		(*C.char)(unsafe.Pointer(&errBuf[0])), C.size_t(len(errBuf)))
	if err := check(rc, errBuf); err != nil {
		return nil, err
	}
	return &Exposer{h}, nil
}

// URL is the pull URL.
func (e *Exposer) URL() string {
	n := C.rgtp_exposer_url(e.h, nil, 0)
	buf := make([]byte, n+1)
	C.rgtp_exposer_url(e.h, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)))
	return string(buf[:n])
}

// Close stops serving and frees the handle.
func (e *Exposer) Close() {
	C.rgtp_exposer_free(e.h)
	e.h = nil
}

// Pull pulls url into out (keyHex: "" for the URL's key).
func Pull(url, out, keyHex string) (C.rgtp_pull_report, error) {
	cURL, cOut := C.CString(url), C.CString(out)
	defer C.free(unsafe.Pointer(cURL))
	defer C.free(unsafe.Pointer(cOut))
	var opts C.rgtp_pull_options
	if keyHex != "" {
		opts.key_hex = C.CString(keyHex)
		defer C.free(unsafe.Pointer(opts.key_hex))
	}
	var report C.rgtp_pull_report
	errBuf := make([]byte, 512)
	rc := C.rgtp_pull_ex(cURL, cOut, &opts, nil, nil, nil, &report,
		(*C.char)(unsafe.Pointer(&errBuf[0])), C.size_t(len(errBuf)))
	return report, check(rc, errBuf)
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		os.Exit(1)
	}
	fmt.Println("Go example: all checks passed")
}

func run() error {
	dir, err := os.MkdirTemp("", "rgtp-go-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	data := make([]byte, 3*1024*1024+99)
	if _, err := rand.Read(data); err != nil {
		return err
	}
	src := filepath.Join(dir, "data.bin")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		return err
	}
	fmt.Println("librgtp", C.GoString(C.rgtp_version()))
	ex, err := Expose(src, "127.0.0.1", 0, filepath.Join(dir, "exposer.key"), dir)
	if err != nil {
		return err
	}
	defer ex.Close()
	url := ex.URL()
	fmt.Println("exposing", url)
	out := filepath.Join(dir, "copy.bin")
	report, err := Pull(url, out, "")
	if err != nil {
		return err
	}
	got, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("pulled bytes differ")
	}
	fmt.Printf("pulled %d bytes in %.3f s\n", uint64(report.bytes), float64(report.seconds))
	_, err = Pull(url, filepath.Join(dir, "copy2.bin"), "0000000000000000000000000000000000000000000000000000000000000001")
	if e, ok := err.(*rgtpError); !ok || e.code != C.RGTP_E_KEY_MISMATCH {
		return fmt.Errorf("wrong key: want RGTP_E_KEY_MISMATCH, got %v", err)
	}
	fmt.Println("wrong key ->", err)
	return nil
}

package lb

// The selection self-test object: a SEC("syscall") wrapper around
// select_backend, loaded only by tests.
//go:generate go tool bpf2go -output-dir $BPF_OUT -cc $BPF_CLANG -strip $BPF_STRIP -target bpfel -cflags $BPF_CFLAGS -no-global-types -type select_args selftest ../bpf/selftest.c

package lb

// The datapath objects, one per program file, all built from bpf/ with the
// pinned clang (see the Makefile's generate target). Types for the shared
// structs are generated once, from the connect object.
//go:generate go tool bpf2go -output-dir $BPF_OUT -cc $BPF_CLANG -strip $BPF_STRIP -target bpfel -cflags $BPF_CFLAGS -type svc_key -type svc_value -type backend -type counters -type rev_key -type rev_value -type local_key -type local_value -type vip_filter -type svc_opts -type affinity_key -type affinity_value -type exclude connect ../bpf/connect.c
//go:generate go tool bpf2go -output-dir $BPF_OUT -cc $BPF_CLANG -strip $BPF_STRIP -target bpfel -cflags $BPF_CFLAGS -no-global-types sendmsg ../bpf/sendmsg.c
//go:generate go tool bpf2go -output-dir $BPF_OUT -cc $BPF_CLANG -strip $BPF_STRIP -target bpfel -cflags $BPF_CFLAGS -no-global-types recvmsg ../bpf/recvmsg.c
//go:generate go tool bpf2go -output-dir $BPF_OUT -cc $BPF_CLANG -strip $BPF_STRIP -target bpfel -cflags $BPF_CFLAGS -no-global-types getname ../bpf/getname.c

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* getpeername4/6 show the VIP a socket dialled; getsockname4/6 show a
 * backend's VIP as its own address, for services that opt in. */
#include "sockmesh.h"

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("cgroup/getpeername4")
int sm_getpeername4(struct bpf_sock_addr *ctx)
{
	return translate_reverse(ctx, 0);
}

SEC("cgroup/getpeername6")
int sm_getpeername6(struct bpf_sock_addr *ctx)
{
	return translate_reverse(ctx, 1);
}

SEC("cgroup/getsockname4")
int sm_getsockname4(struct bpf_sock_addr *ctx)
{
	return translate_local_name(ctx, 0);
}

SEC("cgroup/getsockname6")
int sm_getsockname6(struct bpf_sock_addr *ctx)
{
	return translate_local_name(ctx, 1);
}

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* sendmsg4/sendmsg6: unconnected UDP datagrams to a VIP go to a backend. */
#include "sockmesh.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Also fires for v4-mapped destinations of AF_INET6 sockets. */
SEC("cgroup/sendmsg4")
int sm_sendmsg4(struct bpf_sock_addr *ctx)
{
	return translate_forward(ctx, 0, HOOK_SENDMSG);
}

SEC("cgroup/sendmsg6")
int sm_sendmsg6(struct bpf_sock_addr *ctx)
{
	return translate_forward(ctx, 1, HOOK_SENDMSG);
}

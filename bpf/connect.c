// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* connect4/connect6: TCP and connected UDP to a VIP go to a backend. */
#include "sockmesh.h"

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("cgroup/connect4")
int sm_connect4(struct bpf_sock_addr *ctx)
{
	return translate_forward(ctx, 0, HOOK_CONNECT);
}

/* Also fires for an AF_INET6 socket dialling a v4-mapped VIP: the key is
 * v4-mapped either way, so the IPv4 service is found. */
SEC("cgroup/connect6")
int sm_connect6(struct bpf_sock_addr *ctx)
{
	return translate_forward(ctx, 1, HOOK_CONNECT);
}

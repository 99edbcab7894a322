// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* recvmsg4/recvmsg6: UDP replies from a backend appear to come from the VIP. */
#include "sockmesh.h"

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("cgroup/recvmsg4")
int sm_recvmsg4(struct bpf_sock_addr *ctx)
{
	return translate_reverse(ctx, 0);
}

/* Replies to v4-mapped sends arrive here with a v4-mapped source. */
SEC("cgroup/recvmsg6")
int sm_recvmsg6(struct bpf_sock_addr *ctx)
{
	return translate_reverse(ctx, 1);
}

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* selftest: runs lookup_master and select_backend, the heart of connect/sendmsg, from a
 * SEC("syscall") program, because BPF_PROG_TEST_RUN does not run sock_addr
 * programs. Only the tests load it. */
#include "sockmesh.h"

char __license[] SEC("license") = "Dual BSD/GPL";

struct select_args {
	/* in */
	struct svc_key key;
	__u32 entropy;
	__u32 rr; /* use ticket (round-robin) instead of entropy */
	__u64 ticket;
	/* out */
	__u32 result; /* enum select_result */
	__u32 svc_id;
	__u32 backend_id;
	struct backend backend;
};

SEC("syscall")
int sm_select(struct select_args *args)
{
	struct svc_key key = args->key;
	struct svc_value master;
	struct backend be = {};
	__u32 svc_id = 0, backend_id = 0;

	if (read_master(&key, &master))
		args->result = select_backend(&key, master, args->entropy,
					      args->rr, args->ticket, &be,
					      &svc_id, &backend_id);
	else
		args->result = SELECT_MISS;
	args->svc_id = svc_id;
	args->backend_id = backend_id;
	args->backend = be;
	return 0;
}

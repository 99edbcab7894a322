/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sockmesh.h: the maps, structs and inline translate functions shared by
 * every cgroup sock_addr program of sockmesh. Each program file includes this
 * header, so all programs agree on one set of maps; the loader pins them by
 * name and every object reuses the same pinned maps.
 *
 * Addresses: every address in a map is 16 bytes in network byte order. IPv4
 * addresses are stored v4-mapped (::ffff:a.b.c.d), so an AF_INET6 socket
 * dialling ::ffff:198.18.0.10 finds the IPv4 service with no extra lookup, and
 * reverse lookups work across families for free.
 *
 * Service map layout (Cilium's socket LB, with one change): a service is
 * (VIP, port, proto). Slot 0 is the master entry: service id, slot count,
 * region base and flags. Slots base+1 .. base+count hold backend ids; a
 * backend weighs as many slots as its weight. The control plane writes a new
 * slot set into the region the master does not point at, then flips the
 * master in one update, then deletes the old region: a reader sees either the
 * old or the new slot set, never a mix of both.
 *
 * VIP filter: before the service lookup, the destination is matched against
 * a few prefixes that cover every VIP loaded (sm_vip_filter), so a connect
 * to a non-VIP address costs one inlined array read, not a hash lookup.
 */
#pragma once

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define ECONNREFUSED 111

/* Base of the second slot region; the first starts at 0. */
#define SLOT_REGION 0x10000

/* Master flags. */
#define SVC_F_LOCAL_NAME (1U << 0) /* getsockname of a backend shows the VIP */
#define SVC_F_POLICY_SHIFT 1
#define SVC_F_POLICY_MASK (3U << SVC_F_POLICY_SHIFT) /* enum policy */
#define SVC_F_CLIENT_NETNS (1U << 3) /* clients are netns cookies, not cgroups */
#define SVC_F_AFFINITY (1U << 4)     /* sm_svc_opts holds an affinity timeout */

/* How a service picks a backend (master flags, SVC_F_POLICY_MASK). The
 * slot set is laid out for the policy by the control plane: weighted for
 * random, interleaved in turn order for round-robin, the Maglev lookup
 * table for maglev. */
enum policy {
	POLICY_RANDOM = 0,
	POLICY_ROUND_ROBIN = 1, /* slot = ticket % count, tickets in sm_svc_opts */
	POLICY_MAGLEV = 2,      /* slot from a hash of the client */
};

/* Exclusions: at most this many cgroup subtrees and uids. */
#define EXCLUDE_MAX 8

/* How often the selection re-reads a master whose slot or backend vanished
 * under it (the control plane deleted an old region right after a flip). */
#define SELECT_ATTEMPTS 3

/* Outcome of a forward lookup. */
enum select_result {
	SELECT_MISS = 0,   /* not a VIP: leave the syscall alone */
	SELECT_OK = 1,     /* *out holds the chosen backend */
	SELECT_REFUSE = 2, /* a VIP without (readable) backends: ECONNREFUSED */
};

struct svc_key {
	__u32 addr[4]; /* VIP, network byte order, IPv4 v4-mapped */
	__u16 port;    /* network byte order */
	__u8 proto;    /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
	__u32 slot; /* 0: master; base+1 .. base+count: backend slots */
};

struct svc_value {
	__u32 id;    /* master: service id; slot: backend id */
	__u32 count; /* master: number of slots; 0 refuses connections */
	__u32 base;  /* master: 0 or SLOT_REGION */
	__u32 flags; /* master: SVC_F_* */
};

struct backend {
	__u32 addr[4]; /* network byte order, IPv4 v4-mapped */
	__u16 port;    /* network byte order */
	__u8 family;   /* AF_INET or AF_INET6 */
	__u8 pad;
	__u32 svc_id; /* the service this backend belongs to */
};

/* Per-service state beyond the master entry, for round-robin and affinity
 * services only (SVC_F_POLICY round-robin or SVC_F_AFFINITY). */
struct svc_opts {
	__u64 rr_next;     /* round-robin: the next ticket (atomic add) */
	__u64 affinity_ns; /* affinity: how long a client keeps its backend */
};

/* Affinity: a client of a service and the backend it last got. */
struct affinity_key {
	__u64 client; /* cgroup id or netns cookie (SVC_F_CLIENT_NETNS) */
	__u32 svc_id;
	__u32 pad;
};

struct affinity_value {
	__u64 last_ns; /* bpf_ktime_get_ns of the client's last connection */
	__u32 backend_id;
	__u32 pad;
};

/* A cgroup subtree: a process is in it if its ancestor at level is id. */
struct exclude_cgroup {
	__u64 id;
	__u32 level; /* the root cgroup is level 0 */
	__u32 pad;
};

/* Clients whose traffic is never load-balanced (sidecars, proxies that
 * must reach a VIP itself): their connects and sends go out unchanged. */
struct exclude {
	__u32 ncgroups;
	__u32 nuids;
	struct exclude_cgroup cgroups[EXCLUDE_MAX];
	__u32 uids[EXCLUDE_MAX];
};

/* Prefixes per bank of the VIP filter, per family. */
#define VIP_FILTER_V4 4
#define VIP_FILTER_V6 2

/* A destination may be a VIP if (addr & mask) == net for some entry. An
 * unused entry is net ~0, mask 0: it never matches. */
struct v4_prefix {
	__u32 net; /* network byte order */
	__u32 mask;
};

struct v6_prefix {
	__u32 net[4];
	__u32 mask[4];
};

/* The filter has two banks, entries [0, N) and [N, 2N), and matches if any
 * entry of either matches. An array value is updated in place, not
 * atomically, so the control plane changes the filter in two writes: the
 * new prefixes into the bank nobody relies on, then the old bank cleared.
 * A reader sees a torn entry only in a bank that is not needed at that
 * moment, and a torn entry can at worst match too much. The all-zero value
 * (a new map) matches everything: correct, and as slow as no filter. */
struct vip_filter {
	struct v4_prefix v4[2 * VIP_FILTER_V4]; /* IPv4 and v4-mapped VIPs */
	struct v6_prefix v6[2 * VIP_FILTER_V6];
};

/* Counters, one entry per service id and per backend id. */
struct counters {
	__u64 translations; /* rewrites done (connects, datagrams) */
	__u64 refused;      /* connects/sends refused: no backend */
};

/* What a reverse translation restores: the VIP the application asked for
 * (and its protocol, to re-check that the service still exists). */
struct rev_value {
	__u32 vip[4];
	__u16 vip_port;
	__u8 proto;
	__u8 pad;
};

/* Reverse key: the socket and the backend it was sent to. One socket may
 * talk to many VIPs (unconnected UDP). */
struct rev_key {
	__u64 cookie;
	__u32 backend[4];
	__u16 backend_port;
	__u16 pad;
	__u32 pad2;
};

/* getsockname opt-in: a backend's local address -> its service's VIP. */
struct local_key {
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct local_value {
	__u32 vip[4];
	__u16 vip_port;
	__u16 pad;
};

/* Map sizes here are defaults; the loader may resize them. Maps the control
 * plane fills are not preallocated, so memory follows the services loaded. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 131072);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
} sm_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct backend);
} sm_backends SEC(".maps");

/* Counters: preallocated, so writing one never allocates. Per-CPU values
 * without preallocation are allocated atomically from the kernel's per-CPU
 * pool, which refused them at about 136,000 entries (ENOMEM), and cost
 * entries x CPUs x 16 bytes besides. One value for all CPUs: the programs
 * add atomically. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, __u32);
	__type(value, struct counters);
} sm_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct local_key);
	__type(value, struct local_value);
} sm_local_names SEC(".maps");

/* Reverse entries: (socket cookie, backend) -> VIP, for getpeername and
 * recvmsg. The kernel never deletes them (the key holds a socket cookie), so
 * the map is an LRU: entries of closed sockets age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct rev_key);
	__type(value, struct rev_value);
} sm_rev SEC(".maps");

/* The VIP filter: one entry, written by the control plane (see struct
 * vip_filter). An array, so the verifier inlines the lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vip_filter);
} sm_vip_filter SEC(".maps");

/* Round-robin tickets and affinity timeouts, one entry per service id that
 * needs them (written before the master that sets the flag). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct svc_opts);
} sm_svc_opts SEC(".maps");

/* Affinity entries: an LRU, so clients that stopped connecting age out
 * whatever their timeout. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
} sm_affinity SEC(".maps");

/* The exclusions: one entry, written by the control plane. An array value
 * is updated in place: a connect racing the update may see a mix of the
 * old and new lists, for that one connect. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exclude);
} sm_exclude SEC(".maps");

/* Keeps the compiler from merging or reordering ctx loads. */
#define barrier() asm volatile("" ::: "memory")

/* read_user_addr fills addr from the syscall's address, v4-mapped for IPv4.
 *
 * Verifier: user_ip6[] must be read one 4-byte word at a time straight off
 * ctx. Newer clang turns a loop over ctx->user_ip6[i] into arithmetic on the
 * ctx pointer, which the verifier rejects ("dereference of modified ctx
 * ptr"); the barriers keep each load a separate ctx access. */
static __always_inline void read_user_addr(struct bpf_sock_addr *ctx, int v6,
					   __u32 addr[4])
{
	if (!v6) {
		addr[0] = 0;
		addr[1] = 0;
		addr[2] = bpf_htonl(0x0000ffff);
		addr[3] = ctx->user_ip4;
		return;
	}
	addr[0] = ctx->user_ip6[0];
	barrier();
	addr[1] = ctx->user_ip6[1];
	barrier();
	addr[2] = ctx->user_ip6[2];
	barrier();
	addr[3] = ctx->user_ip6[3];
}

/* write_user_addr stores addr:port into the syscall's address.
 *
 * Verifier: user_port must be written as a full 4-byte store (a 2-byte store
 * is rejected with "invalid bpf_context access"), and user_ip6 one word at a
 * time for the same reason as above. */
static __always_inline void write_user_addr(struct bpf_sock_addr *ctx, int v6,
					    const __u32 addr[4], __u16 port)
{
	if (!v6) {
		ctx->user_ip4 = addr[3];
	} else {
		ctx->user_ip6[0] = addr[0];
		barrier();
		ctx->user_ip6[1] = addr[1];
		barrier();
		ctx->user_ip6[2] = addr[2];
		barrier();
		ctx->user_ip6[3] = addr[3];
	}
	ctx->user_port = (__u32)port;
}

/* user_port is a u32 holding the big-endian port in its first two bytes. */
static __always_inline __u16 read_user_port(struct bpf_sock_addr *ctx)
{
	return (__u16)ctx->user_port;
}

static __always_inline int addr_eq(const __u32 a[4], const __u32 b[4])
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0;
}

static __always_inline void addr_copy(__u32 dst[4], const __u32 src[4])
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}


static __always_inline int is_v4_mapped(const __u32 a[4])
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

static __always_inline void count_translation(__u32 id)
{
	struct counters *c = bpf_map_lookup_elem(&sm_counters, &id);
	if (c) /* result unused: clang emits one BPF atomic add */
		__sync_fetch_and_add(&c->translations, 1);
}

static __always_inline void count_refusal(__u32 id)
{
	struct counters *c = bpf_map_lookup_elem(&sm_counters, &id);
	if (c)
		__sync_fetch_and_add(&c->refused, 1);
}

/* may_be_vip reports whether addr falls in the VIP filter; if not, no
 * service has it and the hash lookup is skipped.
 *
 * Verifier: the lookup of a constant key in an array map is inlined into a
 * bounds check and a pointer add (no helper call), and the loops have
 * constant bounds, so clang unrolls them. For connect4 and sendmsg4
 * is_v4_mapped(addr) is a constant and the IPv6 half is compiled out. */
static __always_inline int may_be_vip(const __u32 addr[4])
{
	__u32 zero = 0;
	struct vip_filter *f = bpf_map_lookup_elem(&sm_vip_filter, &zero);
	int i;

	if (!f)
		return 1; /* cannot happen (an array of one): look it up */
	if (is_v4_mapped(addr)) {
		for (i = 0; i < 2 * VIP_FILTER_V4; i++)
			if ((addr[3] & f->v4[i].mask) == f->v4[i].net)
				return 1;
		return 0;
	}
	for (i = 0; i < 2 * VIP_FILTER_V6; i++) {
		const struct v6_prefix *p = &f->v6[i];

		if ((((addr[0] & p->mask[0]) ^ p->net[0]) |
		     ((addr[1] & p->mask[1]) ^ p->net[1]) |
		     ((addr[2] & p->mask[2]) ^ p->net[2]) |
		     ((addr[3] & p->mask[3]) ^ p->net[3])) == 0)
			return 1;
	}
	return 0;
}

/* lookup_master finds the service entry of key (slot 0). */
static __always_inline struct svc_value *lookup_master(struct svc_key *key)
{
	key->slot = 0;
	return bpf_map_lookup_elem(&sm_services, key);
}

/* read_master copies the master entry of key into *out at once: a hash
 * element the control plane replaces may be reused for another entry while
 * a reader still holds its pointer, so the programs never read a master
 * field through the pointer later on. */
static __always_inline int read_master(struct svc_key *key,
				       struct svc_value *out)
{
	struct svc_value *m = lookup_master(key);

	if (!m)
		return 0;
	*out = *m;
	return 1;
}

/* select_backend picks the backend of the service whose master entry the
 * caller found: in slot ticket % count for round-robin (rr set: exactly
 * even over count consecutive tickets), else in slot entropy*count/2^32 (a
 * multiply-shift instead of a modulo: no division, no bias worth naming).
 * key->slot is clobbered.
 *
 * A slot or backend can vanish between reading the master and reading it
 * (the control plane deletes an old region right after flipping the
 * master), so a miss there re-reads the master, a bounded number of times
 * (a constant-bounded loop: the verifier walks it, kernels >= 5.3). */
static __always_inline enum select_result
select_backend(struct svc_key *key, struct svc_value master, __u32 entropy,
	       int rr, __u64 ticket, struct backend *out, __u32 *svc_id,
	       __u32 *backend_id)
{
	int i;

	for (i = 0; i < SELECT_ATTEMPTS; i++) {
		struct svc_value *slot;
		struct backend *be;
		__u32 count, base;

		if (i > 0 && !read_master(key, &master))
			return SELECT_MISS; /* the service is gone */
		*svc_id = master.id;
		count = master.count;
		base = master.base;
		/* Refuse only on a second reading: the first copy may be of
		 * an element reused under the reader (see read_master). */
		if (count == 0) {
			if (i > 0)
				return SELECT_REFUSE;
			continue;
		}

		if (rr) /* count != 0 here; the verifier also accepts it bare */
			key->slot = base + 1 + (__u32)(ticket % count);
		else
			key->slot = base + 1 +
				    (__u32)(((__u64)entropy * count) >> 32);
		slot = bpf_map_lookup_elem(&sm_services, key);
		if (!slot)
			continue;
		*backend_id = slot->id;
		be = bpf_map_lookup_elem(&sm_backends, backend_id);
		if (!be)
			continue;
		*out = *be;
		return SELECT_OK;
	}
	return SELECT_REFUSE;
}

/* socket_entropy is a per-socket stable random-looking value: UDP sockets
 * send every datagram to the same backend while the backend set holds. */
static __always_inline __u32 socket_entropy(__u64 cookie)
{
	return (__u32)((cookie * 0x9E3779B97F4A7C15ULL) >> 32);
}

/* client_hash spreads a client id (cgroup ids are small and sequential)
 * over 32 bits, salted with the service so that two services do not put
 * the same clients together (splitmix64's finalizer). */
static __always_inline __u32 client_hash(__u64 client, __u32 svc_id)
{
	__u64 h = client ^ ((__u64)svc_id << 32);

	h ^= h >> 30;
	h *= 0xBF58476D1CE4E5B9ULL;
	h ^= h >> 27;
	h *= 0x94D049BB133111EBULL;
	h ^= h >> 31;
	return (__u32)h;
}

/* client_id is what identifies the client to Maglev and affinity: the
 * calling task's cgroup v2 id, or the socket's netns cookie. */
static __always_inline __u64 client_id(struct bpf_sock_addr *ctx, __u32 flags)
{
	if (flags & SVC_F_CLIENT_NETNS)
		return bpf_get_netns_cookie(ctx);
	return bpf_get_current_cgroup_id();
}

/* excluded reports whether the caller is in an excluded cgroup subtree or
 * runs as an excluded uid. Only called on a VIP hit.
 *
 * Verifier: the loops have constant bounds and break on the runtime
 * counts, so they unroll; cgroups[i] and uids[i] index with a constant. */
static __always_inline int excluded(void)
{
	__u32 zero = 0, uid;
	struct exclude *x = bpf_map_lookup_elem(&sm_exclude, &zero);
	int i;

	if (!x || (x->ncgroups | x->nuids) == 0)
		return 0;
	for (i = 0; i < EXCLUDE_MAX; i++) {
		if (i >= x->ncgroups)
			break;
		if (bpf_get_current_ancestor_cgroup_id(x->cgroups[i].level) ==
		    x->cgroups[i].id)
			return 1;
	}
	if (x->nuids == 0)
		return 0;
	uid = (__u32)bpf_get_current_uid_gid();
	for (i = 0; i < EXCLUDE_MAX; i++) {
		if (i >= x->nuids)
			break;
		if (x->uids[i] == uid)
			return 1;
	}
	return 0;
}

/* affinity_lookup finds the backend the client last got from the service,
 * if that was within timeout_ns, and checks it against the current backend
 * set: the control plane keeps in sm_backends exactly the backends of the
 * live slot set, so a backend that was removed, went down or started
 * draining is not found (or belongs to another service id) and the client
 * is balanced afresh. */
static __always_inline int affinity_lookup(__u32 svc_id, __u64 client,
					   __u64 timeout_ns, struct backend *out,
					   __u32 *backend_id)
{
	struct affinity_key ak = {};
	struct affinity_value *av;
	struct backend *be;
	__u64 now;

	ak.client = client;
	ak.svc_id = svc_id;
	av = bpf_map_lookup_elem(&sm_affinity, &ak);
	if (!av)
		return 0;
	now = bpf_ktime_get_ns();
	/* Signed: another CPU may have stored a last_ns newer than now. */
	if ((__s64)(now - av->last_ns) > (__s64)timeout_ns)
		return 0;
	*backend_id = av->backend_id;
	be = bpf_map_lookup_elem(&sm_backends, backend_id);
	if (!be || be->svc_id != svc_id)
		return 0;
	av->last_ns = now; /* a plain store: racing clients write near-equal times */
	*out = *be;
	return 1;
}

static __always_inline void affinity_remember(__u32 svc_id, __u64 client,
					      __u32 backend_id)
{
	struct affinity_key ak = {};
	struct affinity_value av = {};

	ak.client = client;
	ak.svc_id = svc_id;
	av.last_ns = bpf_ktime_get_ns();
	av.backend_id = backend_id;
	bpf_map_update_elem(&sm_affinity, &ak, &av, BPF_ANY);
}

static __always_inline void fill_rev(struct rev_value *rev,
				     const struct svc_key *key)
{
	addr_copy(rev->vip, key->addr);
	rev->vip_port = key->port;
	rev->proto = key->proto;
	rev->pad = 0;
}

/* service_exists re-checks, on every reverse read, that the VIP still names
 * a service: a removed service stops being translated back. */
static __always_inline int service_exists(const struct rev_value *rev)
{
	struct svc_key key = {};

	addr_copy(key.addr, rev->vip);
	key.port = rev->vip_port;
	key.proto = rev->proto;
	return bpf_map_lookup_elem(&sm_services, &key) != NULL;
}

/* Where forward translation is called from. */
enum hook {
	HOOK_CONNECT = 0, /* TCP and connected UDP */
	HOOK_SENDMSG = 1, /* unconnected UDP */
};

/* remember_reverse records, for the socket, that replies from the backend
 * stand for the VIP. Keyed by (socket cookie, backend): one unconnected UDP
 * socket can talk to several VIPs, and a connected socket has one entry.
 *
 * Cost: an LRU update is a few hundred ns cheaper than creating socket
 * storage (bpf_sk_storage_get with F_CREATE allocates per socket), and
 * connect is the hot path. A connect writes without looking first (a
 * socket connects once, or re-connects elsewhere); most datagrams of an
 * unconnected socket repeat the last entry, so sendmsg does not write an
 * equal entry again. */
static __always_inline void remember_reverse(struct bpf_sock_addr *ctx,
					     const struct svc_key *key,
					     const struct backend *be,
					     int fresh)
{
	struct rev_key rk = {};
	struct rev_value rv, *old;

	rk.cookie = bpf_get_socket_cookie(ctx);
	addr_copy(rk.backend, be->addr);
	rk.backend_port = be->port;
	fill_rev(&rv, key);
	if (fresh)
		goto write; /* connect: a new socket has no entry to compare */
	old = bpf_map_lookup_elem(&sm_rev, &rk);
	if (old && addr_eq(old->vip, rv.vip) && old->vip_port == rv.vip_port &&
	    old->proto == rv.proto)
		return;
write:
	bpf_map_update_elem(&sm_rev, &rk, &rv, BPF_ANY);
}

/* translate_forward is connect4/6 and sendmsg4/6: a VIP hit rewrites the
 * destination to a backend and records how to translate back. Returns the
 * program's verdict (1: go on; 0 with retval set: fail the syscall). */
static __always_inline int translate_forward(struct bpf_sock_addr *ctx, int v6,
					     enum hook hook)
{
	struct svc_key key = {};
	struct svc_value master;
	struct svc_opts *opts = NULL;
	struct backend be;
	__u32 svc_id = 0, backend_id = 0, entropy = 0, flags, policy;
	__u32 proto;
	__u64 client = 0, ticket = 0;
	int rr = 0;
	enum select_result res;

	read_user_addr(ctx, v6, key.addr);
	if (!may_be_vip(key.addr))
		return 1; /* not a VIP: the common case, no hash lookup */
	proto = ctx->protocol; /* after the filter: a load through ctx->sk */
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	key.port = read_user_port(ctx);
	key.proto = (__u8)proto;
	if (!read_master(&key, &master))
		return 1;
	if (excluded())
		return 1;

	flags = master.flags;
	svc_id = master.id;
	policy = (flags & SVC_F_POLICY_MASK) >> SVC_F_POLICY_SHIFT;
	if (policy == POLICY_MAGLEV || (flags & SVC_F_AFFINITY))
		client = client_id(ctx, flags);
	/* The round-robin ticket is taken on connect only: sendmsg's
	 * datagrams keep their socket's backend (below) and skip the lookup. */
	if ((policy == POLICY_ROUND_ROBIN && hook == HOOK_CONNECT) ||
	    (flags & SVC_F_AFFINITY))
		opts = bpf_map_lookup_elem(&sm_svc_opts, &svc_id);
	if ((flags & SVC_F_AFFINITY) && opts &&
	    affinity_lookup(svc_id, client, opts->affinity_ns, &be,
			    &backend_id)) {
		res = SELECT_OK;
		goto chosen;
	}

	if (policy == POLICY_MAGLEV) {
		entropy = client_hash(client, svc_id);
	} else if (policy == POLICY_ROUND_ROBIN && hook == HOOK_CONNECT &&
		   opts) {
		/* BPF_ATOMIC_FETCH_ADD (needs -mcpu=v3): each connect gets
		 * its own ticket, whatever the CPU. */
		ticket = __sync_fetch_and_add(&opts->rr_next, 1);
		rr = 1;
	} else if (proto == IPPROTO_TCP) {
		entropy = bpf_get_prandom_u32();
	} else {
		/* UDP: one backend per socket while the set holds. */
		entropy = socket_entropy(bpf_get_socket_cookie(ctx));
	}

	res = select_backend(&key, master, entropy, rr, ticket, &be, &svc_id,
			     &backend_id);
	if (res == SELECT_MISS)
		return 1;
	if (res == SELECT_OK && (flags & SVC_F_AFFINITY))
		affinity_remember(svc_id, client, backend_id);
chosen:
	/* An AF_INET socket cannot reach an IPv6 backend; the control plane
	 * never gives an IPv4 VIP one, but the program does not rely on it. */
	if (res == SELECT_OK && !v6 && be.family != AF_INET)
		res = SELECT_REFUSE;
	if (res == SELECT_REFUSE) {
		count_refusal(svc_id);
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}

	key.slot = 0;
	remember_reverse(ctx, &key, &be, hook == HOOK_CONNECT);
	write_user_addr(ctx, v6, be.addr, be.port);
	count_translation(svc_id);
	count_translation(backend_id);
	return 1;
}

/* reverse_lookup finds the VIP a reply from addr:port stands for. The
 * entry names the backend, so a socket re-connected elsewhere since is not
 * translated. */
static __always_inline struct rev_value *
reverse_lookup(struct bpf_sock_addr *ctx, const __u32 addr[4], __u16 port)
{
	struct rev_key rk = {};

	rk.cookie = bpf_get_socket_cookie(ctx);
	addr_copy(rk.backend, addr);
	rk.backend_port = port;
	return bpf_map_lookup_elem(&sm_rev, &rk);
}

/* translate_reverse is recvmsg4/6 and getpeername4/6: a peer that is a
 * backend this socket was sent to shows as the VIP. Always returns 1 (the
 * only verdict these hooks allow). */
static __always_inline int translate_reverse(struct bpf_sock_addr *ctx, int v6)
{
	__u32 addr[4];
	__u16 port;
	struct rev_value *rev;

	read_user_addr(ctx, v6, addr);
	port = read_user_port(ctx);
	rev = reverse_lookup(ctx, addr, port);
	if (!rev || !service_exists(rev))
		return 1;
	/* An AF_INET socket can only be shown an IPv4 VIP. */
	if (!v6 && !is_v4_mapped(rev->vip))
		return 1;
	write_user_addr(ctx, v6, rev->vip, rev->vip_port);
	return 1;
}

/* translate_local_name is getsockname4/6 for services that opt in: a socket
 * bound to a backend address shows the service's VIP as its own. */
static __always_inline int translate_local_name(struct bpf_sock_addr *ctx,
						int v6)
{
	struct local_key key = {};
	struct local_value *val;
	__u32 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	read_user_addr(ctx, v6, key.addr);
	key.port = read_user_port(ctx);
	key.proto = (__u8)proto;
	val = bpf_map_lookup_elem(&sm_local_names, &key);
	if (!val)
		return 1;
	if (!v6 && !is_v4_mapped(val->vip))
		return 1;
	write_user_addr(ctx, v6, val->vip, val->vip_port);
	return 1;
}

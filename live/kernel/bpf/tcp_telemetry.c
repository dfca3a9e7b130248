/* tokenpace TCP telemetry: per-socket aggregates of the tcp:tcp_probe and tcp:tcp_retransmit_skb
 * tracepoints, for the sockets of a server's listening port(s), drained by userspace once per
 * control interval (live/kernel/telemetry.py). Nothing is sent to userspace per packet.
 *
 * Units, from include/trace/events/tcp.h:
 *   srtt      = tp->srtt_us >> 3, i.e. the smoothed RTT in MICROSECONDS (srtt_us holds 8 x srtt)
 *   snd_cwnd  = tcp_snd_cwnd(tp), packets;  ssthresh = tcp_current_ssthresh(sk), packets
 *               (0x7fffffff = TCP_INFINITE_SSTHRESH: no loss seen yet)
 *   snd_wnd   = the peer's advertised window, bytes;  snd_nxt / snd_una: sequence numbers (u32, wrap)
 *   sport     = local port, host byte order;  sock_cookie = sock_gen_cookie(sk) = SO_COOKIE
 * tcp_probe fires at the top of tcp_rcv_established(), i.e. for every segment (mostly ACKs) an
 * established socket receives, BEFORE that segment is processed: the values are those the ACK is
 * about to update. tcp_retransmit_skb fires once per retransmitted skb (one or more MSS segments
 * under TSO/GSO); on kernels whose format has an `err` field (>= 6.10) it also fires for failed
 * attempts, which we skip.
 *
 * tcp_retransmit_skb carries no sock_cookie, but both tracepoints carry skaddr (the struct sock
 * pointer): tcp_probe fills skaddr -> cookie (sk_cookie) and retransmits are charged through it.
 * A retransmit on a socket not yet seen by tcp_probe waits in orphan_retrans until it is.
 *
 * Only tracepoint arguments are read, never struct sock/tcp_sock fields: the tracepoint layout
 * comes from tracefs at compile time, so headers of another kernel version are good enough.
 *
 * Counters are cumulative (userspace diffs them: no read-and-reset race). The per-interval
 * min/max are kept in two slots indexed by the interval number ("epoch") that userspace bumps
 * when it drains; a slot is restarted by the first sample carrying a new epoch.
 *
 * Compile-time parameters (-D from live/kernel/telemetry.py):
 *   TP_SUB_BITS, TP_MAX_LOG2, TP_NBUCKETS  RTT histogram geometry (log-linear: 2^SUB_BITS buckets
 *                                          per power of two, exact below 2^SUB_BITS us)
 *   TP_MAX_SOCKS                           size of the per-socket map
 *   TP_RETRANS_HAS_ERR                     tcp_retransmit_skb has the `err` field
 *   TP_HAVE_DESTROY                        tcp:tcp_destroy_sock exists (with sock_cookie)
 */
#include <linux/types.h>

struct sock_stats {
    u64 samples;        /* tcp_probe hits (cumulative) */
    u64 srtt_sum_us;    /* sum of srtt over those hits (cumulative) */
    u64 retrans;        /* retransmitted skbs (cumulative) */
    u64 acked_bytes;    /* sum of snd_una advances (cumulative) */
    u64 last_ns;        /* bpf_ktime_get_ns() of the last update (CLOCK_MONOTONIC) */
    u32 srtt_us;        /* last values seen */
    u32 cwnd;
    u32 ssthresh;
    u32 snd_wnd;
    u32 inflight;       /* snd_nxt - snd_una */
    u32 snd_una;
    u32 closed;         /* tcp_destroy_sock seen */
    u32 mm_epoch[2];    /* min/max slots, tagged with the epoch they belong to */
    u32 mm_min[2];
    u32 mm_max[2];
    u32 hist[TP_NBUCKETS]; /* srtt histogram (cumulative) */
};

BPF_ARRAY(epoch, u32, 1);                 /* interval number, bumped by userspace at each drain */
BPF_ARRAY(config, u32, 1);                /* [0]: 1 = filter by `ports`, 0 = every socket */
BPF_ARRAY(ports, u8, 65536);              /* [local port] = 1 for the ports of interest (host order);
                                             an array: its lookup is inlined, the cheapest filter */
BPF_PERCPU_ARRAY(blank, struct sock_stats, 1); /* an all-zero value to insert from (too big for the stack) */
BPF_TABLE("lru_hash", u64, struct sock_stats, socks, TP_MAX_SOCKS);   /* sock_cookie -> stats */
BPF_TABLE("lru_hash", u64, u64, sk_cookie, TP_MAX_SOCKS);             /* skaddr -> sock_cookie */
BPF_TABLE("lru_hash", u64, u64, orphan_retrans, 1024);                /* skaddr -> retransmits */

static __always_inline int port_wanted(u16 lport) {
    u32 zero = 0;
    u32 *filter = config.lookup(&zero);
    if (!filter || *filter == 0)
        return 1;
    u32 idx = lport;
    u8 *on = ports.lookup(&idx);
    return on && *on;
}

/* floor(log2(v)) for v > 0, branch-free enough for the verifier */
static __always_inline u32 ilog2_u32(u32 v) {
    u32 r = 0, s;
    s = (v > 0xFFFF) << 4; v >>= s; r |= s;
    s = (v > 0xFF) << 3;   v >>= s; r |= s;
    s = (v > 0xF) << 2;    v >>= s; r |= s;
    s = (v > 0x3) << 1;    v >>= s; r |= s;
    r |= (v >> 1);
    return r;
}

static __always_inline u32 rtt_bucket(u32 v) {
    const u32 S = 1u << TP_SUB_BITS;
    if (v < S)
        return v;
    const u32 vmax = (2u << TP_MAX_LOG2) - 1;
    if (v > vmax)
        v = vmax;
    u32 o = ilog2_u32(v);
    u32 sub = (v >> (o - TP_SUB_BITS)) & (S - 1);
    u32 idx = (o - TP_SUB_BITS + 1) * S + sub;
    return idx < TP_NBUCKETS ? idx : TP_NBUCKETS - 1;
}

TRACEPOINT_PROBE(tcp, tcp_probe) {
    if (!port_wanted(args->sport))
        return 0;
    u64 cookie = args->sock_cookie;
    u64 sk = (u64)args->skaddr;
    u32 zero = 0;
    struct sock_stats *s = socks.lookup(&cookie);
    if (!s) {
        struct sock_stats *b = blank.lookup(&zero);
        if (!b)
            return 0;
        socks.insert(&cookie, b);
        s = socks.lookup(&cookie);
        if (!s)
            return 0;
        s->snd_una = args->snd_una;
        sk_cookie.update(&sk, &cookie);
        u64 *orph = orphan_retrans.lookup(&sk);
        if (orph) {
            s->retrans += *orph;
            orphan_retrans.delete(&sk);
        }
    }
    /* Updates of one socket are serialised by its socket lock: plain arithmetic is enough. */
    u32 srtt = args->srtt;
    s->samples += 1;
    s->srtt_sum_us += srtt;
    s->acked_bytes += (u32)(args->snd_una - s->snd_una);
    s->snd_una = args->snd_una;
    s->srtt_us = srtt;
    s->cwnd = args->snd_cwnd;
    s->ssthresh = args->ssthresh;
    s->snd_wnd = args->snd_wnd;
    s->inflight = args->snd_nxt - args->snd_una;
    s->last_ns = bpf_ktime_get_ns();

    u32 *ep = epoch.lookup(&zero);
    u32 e = ep ? *ep : 0;
    u32 slot = e & 1;
    if (s->mm_epoch[slot] != e || s->mm_min[slot] == 0) {
        s->mm_epoch[slot] = e;
        s->mm_min[slot] = srtt ? srtt : 1; /* 0 marks "empty"; a 0 us srtt reads as 1 us */
        s->mm_max[slot] = srtt;
    } else {
        if (srtt < s->mm_min[slot])
            s->mm_min[slot] = srtt ? srtt : 1;
        if (srtt > s->mm_max[slot])
            s->mm_max[slot] = srtt;
    }
    u32 idx = rtt_bucket(srtt);
    if (idx < TP_NBUCKETS)
        s->hist[idx] += 1;
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb) {
#ifdef TP_RETRANS_HAS_ERR
    if (args->err != 0)
        return 0;
#endif
    if (!port_wanted(args->sport))
        return 0;
    u64 sk = (u64)args->skaddr;
    u64 *cookie = sk_cookie.lookup(&sk);
    if (cookie) {
        struct sock_stats *s = socks.lookup(cookie);
        if (s) {
            s->retrans += 1;
            s->last_ns = bpf_ktime_get_ns();
            return 0;
        }
    }
    u64 one = 1;
    u64 *orph = orphan_retrans.lookup(&sk);
    if (orph)
        *orph += 1;
    else
        orphan_retrans.update(&sk, &one);
    return 0;
}

#ifdef TP_HAVE_DESTROY
TRACEPOINT_PROBE(tcp, tcp_destroy_sock) {
    if (!port_wanted(args->sport))
        return 0;
    u64 cookie = args->sock_cookie;
    struct sock_stats *s = socks.lookup(&cookie);
    if (s) {
        s->closed = 1;
        s->last_ns = bpf_ktime_get_ns();
    }
    u64 sk = (u64)args->skaddr;
    sk_cookie.delete(&sk);
    orphan_retrans.delete(&sk);
    return 0;
}
#endif
